"""Jobs' containers through the standard library: ``status``, ``stop``, ``logs``, and
the containers of a local ``caliban run``.

Those commands need a list, an inspect, a stop and a remove, or a job's log,
and aiodocker (with aiohttp under it) takes longer to import than all of them
take to answer. :class:`QuickEngine` makes these calls with
:mod:`caliban.adapters.enginequick` on the engine's Unix socket and gives
:class:`~caliban.platforms.local.containers.JobContainers` the same answers
aiodocker would: the same list entries and inspects, the same errors (an
:class:`~caliban.adapters.enginequick.EngineError` carries the status and the
engine's message, as aiodocker's ``DockerError`` does) and the same text of a
log.

A log read from the engine is one stream of frames when the container has no
terminal: each an 8-byte header (stream number, three zero bytes, the
payload's length, big-endian) and the payload. With a terminal it is the raw
bytes. Either way the text is decoded as aiodocker does it: UTF-8 across
pieces, undecodable bytes dropped.

A run needs a few calls more: create, attach, start and wait.
:class:`QuickDocker` answers them with aiodocker's shapes (``containers.create``
gives a container whose ``attach`` yields the same stream numbers and bytes), so
:class:`~caliban.platforms.local.containers.LocalBackend` runs on either
client, and a sweep on the engine's Unix socket never imports aiodocker: its
import (aiohttp's with it) would cost a fifth of a second of CPU before the first
container is made, on the critical path of every sweep.
"""

from __future__ import annotations

import codecs
import contextlib
import struct
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, NamedTuple

import anyio

from caliban.adapters import enginequick
from caliban.adapters.enginequick import target
from caliban.platforms.local.engineapi import Handle

_HEADER = struct.Struct(">BxxxL")
# Connections open at once: a stop of a thousand jobs queues its calls, as
# aiodocker's connection pool (100) does, instead of opening a socket for each.
CONNECTIONS = 32
# A run's calls at once, as many as aiodocker's pool allowed it: the stops of an
# interrupted sweep of many slots go out together, each within its grace period.
RUN_CONNECTIONS = 100


class Frame(NamedTuple):
    """One piece of an attached container's output, as aiodocker's ``Message``:
    ``stream`` 1 is stdout, 2 stderr."""

    stream: int
    data: bytes


class QuickContainer:
    """One container on the socket at ``path`` (a :class:`Handle`), by id or name.
    ``tty``: whether it has a terminal, when known (an attach asks otherwise)."""

    def __init__(
        self,
        path: str,
        container_id: str,
        limiter: anyio.CapacityLimiter | None = None,
        *,
        tty: bool | None = None,
    ) -> None:
        self._path = path
        self._id = container_id
        self._limiter = limiter or anyio.CapacityLimiter(CONNECTIONS)
        self._tty = tty

    @property
    def id(self) -> str:
        return self._id

    def _at(self, action: str = "", **query: object) -> str:
        return target(f"/containers/{urllib.parse.quote(self._id, safe='')}{action}", **query)

    async def _call(self, method: str, where: str) -> Any:
        async with self._limiter:
            return await enginequick.call(self._path, method, where)

    async def show(self) -> dict[str, Any]:
        info: dict[str, Any] = await self._call("GET", self._at("/json"))
        return info

    async def stop(self, *, t: int | None = None) -> None:
        # 304 (already stopped) is no error, as with aiodocker.
        await self._call("POST", self._at("/stop", t=t))

    async def kill(self) -> None:
        await self._call("POST", self._at("/kill"))

    async def delete(self, *, force: bool = False, v: bool = False) -> None:
        await self._call("DELETE", self._at(force=force or None, v=v or None))

    async def start(self) -> None:
        await self._call("POST", self._at("/start"))

    async def wait(self) -> dict[str, Any]:
        # No connection slot held: a wait lasts as long as the job.
        answer: dict[str, Any] = await enginequick.call(self._path, "POST", self._at("/wait"))
        return answer

    def attach(self, *, stdout: bool = False, stderr: bool = False) -> QuickStream:
        """The container's output from now on, once entered (aiodocker's ``attach``)."""
        return QuickStream(self, self._at("/attach", stream=True, stdout=stdout, stderr=stderr))

    async def has_tty(self) -> bool:
        if self._tty is None:
            self._tty = bool((await self.show()).get("Config", {}).get("Tty"))
        return self._tty

    def log(
        self, *, stdout: bool = False, stderr: bool = False, follow: bool
    ) -> AsyncIterator[str]:
        """Its log as text as it comes (aiodocker's ``log`` with ``follow``)."""
        assert stdout and stderr, "a job's log is both streams"
        return _decoded(self.log_pieces(follow=follow))

    async def log_pieces(self, *, follow: bool) -> AsyncIterator[bytes]:
        """The log's payload bytes, frame headers taken off when there are frames."""
        tty = await self.has_tty()
        where = self._at("/logs", stdout=True, stderr=True, follow=follow)
        async with self._limiter, enginequick.stream(self._path, "GET", where) as body:
            if tty:
                async for piece in body:
                    yield piece
                return
            async for payload in demultiplex(body):
                yield payload


class QuickStream:
    """An attach: entered, the engine has attached; :meth:`read_out` then gives the
    output as aiodocker's stream does (None once it has ended)."""

    def __init__(self, container: QuickContainer, where: str) -> None:
        self._container = container
        self._where = where
        self._stack = contextlib.AsyncExitStack()
        self._frames: AsyncGenerator[Frame, None] | None = None

    async def __aenter__(self) -> QuickStream:
        tty = await self._container.has_tty()
        path = self._container._path
        async with contextlib.AsyncExitStack() as stack:
            body = await stack.enter_async_context(enginequick.attach(path, self._where))
            self._frames = _raw(body) if tty else frames(body)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The frame reader first, then its connection: nothing is left to the
        # garbage collector to finish (a cancelled job's attach ends here too).
        try:
            if self._frames is not None:
                await self._frames.aclose()
        finally:
            await self._stack.aclose()

    async def read_out(self) -> Frame | None:
        assert self._frames is not None, "read_out needs the stream entered"
        try:
            return await anext(self._frames)
        except StopAsyncIteration:
            return None


async def _raw(body: AsyncIterator[bytes]) -> AsyncGenerator[Frame, None]:
    async for piece in body:
        yield Frame(1, piece)  # a terminal has one stream, shown as stdout


async def frames(body: AsyncIterator[bytes]) -> AsyncGenerator[Frame, None]:
    """The frames of an Engine API frame stream, however its bytes are cut."""
    pending = bytearray()
    async for piece in body:
        pending += piece
        while len(pending) >= _HEADER.size:
            stream, length = _HEADER.unpack_from(pending)
            if len(pending) < _HEADER.size + length:
                break
            payload = bytes(pending[_HEADER.size : _HEADER.size + length])
            del pending[: _HEADER.size + length]
            if payload:
                yield Frame(stream, payload)
    # A frame cut short (the engine went away mid-frame) is dropped, as aiodocker does.


async def demultiplex(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The payloads of an Engine API frame stream, however its bytes are cut."""
    async for frame in frames(body):
        yield frame.data


async def _decoded(pieces: AsyncIterator[bytes]) -> AsyncIterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    async for piece in pieces:
        yield decoder.decode(piece)
    if rest := decoder.decode(b"", final=True):
        yield rest


class QuickEngine:
    """:class:`~caliban.platforms.local.containers.Engine` on the socket at ``path``."""

    def __init__(self, path: str, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.path = path
        self.limiter = limiter or anyio.CapacityLimiter(CONNECTIONS)

    async def listed(self, filters: str) -> list[tuple[Handle, dict[str, Any]]]:
        where = target("/containers/json", all=True, filters=filters)
        async with self.limiter:
            found: list[dict[str, Any]] = await enginequick.call(self.path, "GET", where) or []
        return [(QuickContainer(self.path, e["Id"], self.limiter), e) for e in found]

    async def output(self, handle: Handle) -> list[str]:
        return [text async for text in self.follow(handle, follow=False)]

    def follow(self, handle: Handle, *, follow: bool = True) -> AsyncIterator[str]:
        assert isinstance(handle, QuickContainer)
        return _decoded(handle.log_pieces(follow=follow))


class _Containers:
    def __init__(self, path: str, limiter: anyio.CapacityLimiter) -> None:
        self._path = path
        self._limiter = limiter

    async def create(self, config: dict[str, Any], *, name: str | None = None) -> QuickContainer:
        where = target("/containers/create", name=name)
        async with self._limiter:
            made = await enginequick.call(self._path, "POST", where, config)
        return QuickContainer(self._path, made["Id"], self._limiter, tty=bool(config.get("Tty")))

    def container(self, name: str) -> QuickContainer:
        """A container by name or id, not looked up (a removal of one that may exist)."""
        return QuickContainer(self._path, name, self._limiter)

    async def get(self, name: str) -> QuickContainer:
        """The container by name or id; :class:`EngineError` 404 when there is none."""
        info = await QuickContainer(self._path, name, self._limiter).show()
        tty = bool(info.get("Config", {}).get("Tty"))
        return QuickContainer(self._path, info["Id"], self._limiter, tty=tty)


class _Images:
    def __init__(self, path: str, limiter: anyio.CapacityLimiter) -> None:
        self._path = path
        self._limiter = limiter

    async def inspect(self, name: str) -> dict[str, Any]:
        """The image; :class:`EngineError` 404 when there is none, as with aiodocker."""
        where = f"/images/{urllib.parse.quote(name, safe='')}/json"
        async with self._limiter:
            info: dict[str, Any] = await enginequick.call(self._path, "GET", where)
        return info


class QuickDocker:
    """The part of ``aiodocker.Docker`` a local run uses (``containers.create``,
    ``.get``, ``.container``; ``images.inspect``), on the socket at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.limiter = anyio.CapacityLimiter(RUN_CONNECTIONS)
        self.containers = _Containers(path, self.limiter)
        self.images = _Images(path, self.limiter)
