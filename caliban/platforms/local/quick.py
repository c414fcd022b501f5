"""Jobs' containers through the standard library: ``status``, ``stop`` and ``logs``.

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
"""

from __future__ import annotations

import codecs
import struct
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import anyio

from caliban.adapters import enginequick
from caliban.adapters.enginequick import target
from caliban.platforms.local.containers import Handle

_HEADER = struct.Struct(">BxxxL")
# Connections open at once: a stop of a thousand jobs queues its calls, as
# aiodocker's connection pool (100) does, instead of opening a socket for each.
CONNECTIONS = 32


class QuickContainer:
    """One container on the socket at ``path`` (a :class:`Handle`)."""

    def __init__(
        self, path: str, container_id: str, limiter: anyio.CapacityLimiter | None = None
    ) -> None:
        self._path = path
        self._id = container_id
        self._limiter = limiter or anyio.CapacityLimiter(CONNECTIONS)

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

    async def log_pieces(self, *, follow: bool) -> AsyncIterator[bytes]:
        """The log's payload bytes, frame headers taken off when there are frames."""
        tty = bool((await self.show()).get("Config", {}).get("Tty"))
        where = self._at("/logs", stdout=True, stderr=True, follow=follow)
        async with self._limiter, enginequick.stream(self._path, "GET", where) as body:
            if tty:
                async for piece in body:
                    yield piece
                return
            async for payload in demultiplex(body):
                yield payload


async def demultiplex(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The payloads of an Engine API frame stream, however its bytes are cut."""
    pending = bytearray()
    async for piece in body:
        pending += piece
        while len(pending) >= _HEADER.size:
            _, length = _HEADER.unpack_from(pending)
            if len(pending) < _HEADER.size + length:
                break
            payload = bytes(pending[_HEADER.size : _HEADER.size + length])
            del pending[: _HEADER.size + length]
            if payload:
                yield payload
    # A frame cut short (the engine went away mid-frame) is dropped, as aiodocker does.


async def _decoded(pieces: AsyncIterator[bytes]) -> AsyncIterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    async for piece in pieces:
        yield decoder.decode(piece)
    if rest := decoder.decode(b"", final=True):
        yield rest


class QuickEngine:
    """:class:`~caliban.platforms.local.containers.Engine` on the socket at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.limiter = anyio.CapacityLimiter(CONNECTIONS)

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
