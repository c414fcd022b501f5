"""A few Engine API calls over the engine's Unix socket, without aiohttp.

A no-change ``caliban build`` needs a single answer from the engine (does the
image with this content hash exist?), and ``caliban status``, ``stop`` and
``logs`` of local jobs a handful more (list, inspect, stop, remove, logs);
importing aiodocker and aiohttp costs ten times those round trips. This module
asks them with the standard library over ``AF_UNIX``, for the engine aiodocker
would pick:
``DOCKER_HOST=unix://...``, or no ``DOCKER_HOST`` and one of the usual
sockets. Any other way to the engine (TCP, TLS, SSH, a Docker context) is
left to aiodocker: :func:`local_socket` returns None for it.

The path carries no API version, so the engine answers in its own, which is
what aiodocker's ``api_version="auto"`` settles on (it asks ``/version``
first); the fields caliban reads (an image inspect, a container's list entry,
inspect and state) are the same in every version caliban uses.

:func:`inspect_image`, :func:`call` and :func:`stream` are async, on anyio's
Unix sockets, so a followed log or a long ``stop`` is cancelled like any other
await.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from caliban.errors import BackendError, EngineUnavailable

# Where aiodocker looks, in its order, when DOCKER_HOST is not set.
_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock", "~/.docker/run/docker.sock")
_TIMEOUT = 15.0


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


class EngineError(Exception):
    """The engine answered a call with an error status (aiodocker's DockerError, without
    aiodocker): ``status`` is the HTTP status, ``message`` the engine's own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def target(endpoint: str, **query: object) -> str:
    """``endpoint`` with its query, valued as aiodocker sends them (booleans as 1/0)."""
    params = {
        k: ("1" if v else "0") if isinstance(v, bool) else str(v)
        for k, v in query.items()
        if v is not None
    }
    return endpoint + ("?" + urllib.parse.urlencode(params) if params else "")


_HEAD_LIMIT = 1 << 16
# What a connection the engine dropped (or cut short) raises while it is read.
_CUT = (OSError, anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError)


class _Response:
    """Status, headers and body reader of one answer on a connection of its own."""

    def __init__(self, status: int, headers: dict[str, str], body: BufferedByteReceiveStream):
        self.status = status
        self.headers = headers
        self._body = body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked, sized, or up to the end of the connection)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self._body.receive_until(b"\r\n", _HEAD_LIMIT)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                yield await self._body.receive_exactly(size)
                await self._body.receive_exactly(2)
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left:
                piece = await self._body.receive(min(left, 1 << 16))
                left -= len(piece)
                yield piece
        else:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    yield await self._body.receive()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        """:meth:`chunks`, ending quietly where the engine cut the answer off, as
        aiodocker's log stream does."""
        with contextlib.suppress(*_CUT):
            async for piece in self.chunks():
                yield piece


def _error(status: int, body: bytes) -> EngineError:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and "message" in data:
        return EngineError(status, str(data["message"]))
    return EngineError(status, body[:200].decode("utf-8", "replace").strip())


@contextlib.asynccontextmanager
async def _exchange(
    path: str, method: str, where: str, body: bytes | None, *, upgrade: bool = False
) -> AsyncIterator[_Response]:
    try:
        sock: ByteStream = await anyio.connect_unix(path)
    except OSError as exc:
        raise EngineUnavailable(f"unix://{path}: {exc.strerror or exc}") from exc
    async with sock:
        head = [f"{method} {where} HTTP/1.1", "Host: docker"]
        # An attach asks to take the connection over, as aiodocker does; the engine
        # then sends the container's raw output on it until the container exits.
        head += ["Connection: Upgrade", "Upgrade: tcp"] if upgrade else ["Connection: close"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        try:
            await sock.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
            reader = BufferedByteReceiveStream(sock)
            raw = await reader.receive_until(b"\r\n\r\n", _HEAD_LIMIT)
        except (*_CUT, anyio.DelimiterNotFound) as exc:
            raise EngineUnavailable(
                f"unix://{path}: no answer ({exc or type(exc).__name__})"
            ) from exc
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise EngineUnavailable(f"unix://{path}: not an HTTP answer ({status_line[:80]!r})")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        yield _Response(int(parts[1]), headers, reader)


async def call(path: str, method: str, where: str, body: Any = None) -> Any:
    """One Engine API call on the socket at ``path``: the decoded JSON answer (None for
    an empty one). An error status raises :class:`EngineError`."""
    data = None if body is None else json.dumps(body).encode()
    async with _exchange(path, method, where, data) as response:
        try:
            answer = await response.read()
        except _CUT as exc:
            raise EngineUnavailable(
                f"unix://{path}: answer cut off ({exc or type(exc).__name__})"
            ) from exc
    if response.status >= 400:
        raise _error(response.status, answer)
    if not answer.strip():
        return None
    try:
        return json.loads(answer)
    except ValueError:
        raise EngineError(response.status, f"not JSON: {answer[:200]!r}") from None


@contextlib.asynccontextmanager
async def stream(path: str, method: str, where: str) -> AsyncIterator[AsyncIterator[bytes]]:
    """An Engine API answer read as it comes (a followed log): its body's pieces. An error
    status raises :class:`EngineError` before anything is read."""
    async with _exchange(path, method, where, None) as response:
        if response.status >= 400:
            raise _error(response.status, b"".join([p async for p in response.pieces()]))
        yield response.pieces()


@contextlib.asynccontextmanager
async def attach(path: str, where: str) -> AsyncIterator[AsyncIterator[bytes]]:
    """``POST .../attach`` taken over as aiodocker's attach takes it: the connection
    the engine hands over, read as it comes, until the container's output ends. The
    engine answers once it is attached, so whatever starts the container after
    this is entered misses none of its output."""
    async with _exchange(path, "POST", where, None, upgrade=True) as response:
        if response.status >= 400:
            raise _error(response.status, b"".join([p async for p in response.pieces()]))
        body = response.pieces()
        try:
            yield body
        finally:
            await body.aclose()


async def _get(path: str, where: str) -> tuple[int, bytes]:
    """``GET where``'s status and whole body, within :data:`_TIMEOUT`; an engine that
    does not answer, or cuts the answer off, is :class:`EngineUnavailable`."""
    try:
        with anyio.fail_after(_TIMEOUT):
            async with _exchange(path, "GET", where, None) as response:
                return response.status, await response.read()
    except TimeoutError as exc:
        raise EngineUnavailable(f"unix://{path}: no answer in {_TIMEOUT:g} s") from exc
    except _CUT as exc:
        raise EngineUnavailable(
            f"unix://{path}: answer cut off ({exc or type(exc).__name__})"
        ) from exc


async def ping(path: str) -> None:
    """That an engine answers on the socket at ``path`` (:class:`EngineUnavailable`
    if not), as aiodocker's connect checks it."""
    status, answer = await _get(path, "/_ping")
    if status >= 400:
        raise EngineUnavailable(f"unix://{path}: {_error(status, answer).message}")


async def inspect_image(path: str, ref: str) -> dict[str, Any] | None:
    """``GET /images/{ref}/json`` on the socket at ``path``: the image, or None if it
    does not exist."""
    status, body = await _get(path, f"/images/{urllib.parse.quote(ref, safe='')}/json")
    if status == 404:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status != 200 or not isinstance(data, dict):
        message = (
            data.get("message") if isinstance(data, dict) else body[:200].decode("utf-8", "replace")
        )
        raise BackendError(
            f"Docker engine: image inspect of {ref}: {status} {message}".rstrip(),
            status=status,
        )
    return data
