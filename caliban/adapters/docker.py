"""Connecting to the Docker engine, and translating its errors.

aiodocker picks the daemon the usual way (DOCKER_HOST, the docker context, the
default socket) and asks it for its API version, so an old daemon works with
a newer client installed next to it. aiodocker (and aiohttp under it) is
imported when a connection is made, not with this module: a no-change build
never needs it (:mod:`caliban.adapters.enginequick`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from caliban.errors import EngineUnavailable

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.exceptions import DockerError

# Everything caliban creates carries this label, and cleanup only ever
# touches objects that have it.
MANAGED_LABEL = "caliban.managed"
# A session's own labels go on the images it builds under this prefix, not as they are:
# Docker copies an image's labels onto every container made from it, and an image is
# shared by every later run with the same content, whatever labels that run was given.
BUILT_WITH_PREFIX = "caliban.built_with."


def image_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {BUILT_WITH_PREFIX + key: value for key, value in labels.items()}


@contextlib.asynccontextmanager
async def connect(url: str | None = None) -> AsyncIterator[aiodocker.Docker]:
    import aiodocker
    from aiodocker.exceptions import DockerError

    try:
        docker = aiodocker.Docker(url=url)
    except (ValueError, OSError) as exc:
        raise EngineUnavailable(str(exc)) from exc
    try:
        try:
            with anyio.fail_after(15):
                await docker.version()
        except DockerError as exc:
            raise EngineUnavailable(_reason(exc)) from exc
        except (OSError, TimeoutError) as exc:
            raise EngineUnavailable(f"{docker.docker_host}: {exc or 'timed out'}") from exc
        yield docker
    finally:
        with anyio.CancelScope(shield=True):
            await docker.close()


def _reason(exc: DockerError) -> str:
    message = exc.message if isinstance(exc.message, str) else json.dumps(exc.message)
    return message.removeprefix("Cannot connect to Docker Engine via ").strip() or str(exc)


def errors() -> tuple[type[Exception], ...]:
    """What a failed engine call raises: the stdlib client's error, and aiodocker's
    once aiodocker is loaded (it raises none before), so catching them does not
    import it."""
    from caliban.adapters.enginequick import EngineError

    loaded = sys.modules.get("aiodocker.exceptions")
    return (EngineError, loaded.DockerError) if loaded is not None else (EngineError,)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an engine error of either client."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def error_text(exc: BaseException) -> str:
    """The daemon's own words, without aiodocker's decoration."""
    msg: Any = getattr(exc, "message", str(exc))
    if isinstance(msg, dict):
        msg = msg.get("message", json.dumps(msg))
    return str(msg).strip()


def label_filter(**labels: str) -> str:
    """The JSON ``filters`` argument of list calls, for ``key=value`` labels."""
    return json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})


async def inspect_image(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    """The engine's description of an image, or None when there is no such image."""
    from aiodocker.exceptions import DockerError

    try:
        info: dict[str, Any] = await docker.images.inspect(ref)
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise
    return info


async def image_exists(docker: aiodocker.Docker, ref: str) -> bool:
    return await inspect_image(docker, ref) is not None
