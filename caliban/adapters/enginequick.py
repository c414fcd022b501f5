"""One image inspect over the engine's Unix socket, without aiohttp.

A no-change ``caliban build`` needs a single answer from the engine (does the
image with this content hash exist?), and importing aiodocker and aiohttp
costs ten times that round trip. This module asks it with the standard
library's HTTP client over ``AF_UNIX``, for the engine aiodocker would pick:
``DOCKER_HOST=unix://...``, or no ``DOCKER_HOST`` and one of the usual
sockets. Any other way to the engine (TCP, TLS, SSH, a Docker context) is
left to aiodocker: :func:`local_socket` returns None for it.

The path carries no API version, so the engine answers in its own, which is
what aiodocker's ``api_version="auto"`` settles on (it asks ``/version``
first); an image inspect's fields are the same in every version caliban uses.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caliban.errors import BackendError, EngineUnavailable

# Where aiodocker looks, in its order, when DOCKER_HOST is not set.
_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock", "~/.docker/run/docker.sock")
_TIMEOUT = 15.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _context_named(environ: Mapping[str, str]) -> bool:
    """Whether a Docker context other than "default" picks the engine."""
    name = environ.get("DOCKER_CONTEXT")
    if name is None:
        try:
            config = json.loads((Path.home() / ".docker" / "config.json").read_bytes())
        except (OSError, ValueError):
            return False
        name = config.get("currentContext") if isinstance(config, dict) else None
    return name not in (None, "", "default")


def local_socket(url: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The engine's Unix socket, as aiodocker would choose it; None when it is reached
    another way (or when that choice needs aiodocker's own rules)."""
    if url is None:
        if _context_named(environ):
            return None
        url = environ.get("DOCKER_HOST")
    if url is None:
        for candidate in _SOCKETS:
            path = Path(candidate).expanduser()
            if path.is_socket():
                return str(path)
        return None
    if url.startswith("unix://"):
        return url.removeprefix("unix://")
    return None


def inspect_image(path: str, ref: str, *, timeout: float = _TIMEOUT) -> dict[str, Any] | None:
    """``GET /images/{ref}/json`` on the socket at ``path``: the image, or None if it
    does not exist. Blocking: run it in a thread."""
    conn = _UnixConnection(path, timeout)
    try:
        try:
            conn.request("GET", f"/images/{urllib.parse.quote(ref, safe='')}/json")
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise EngineUnavailable(f"unix://{path}: {exc.strerror or exc}") from exc
    finally:
        conn.close()
    if response.status == 404:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if response.status != 200 or not isinstance(data, dict):
        message = data.get("message") if isinstance(data, dict) else body[:200].decode("replace")
        raise BackendError(
            f"Docker engine: image inspect of {ref}: {response.status} {message}".rstrip(),
            status=response.status,
        )
    return data
