"""A local job's output: every byte to its log file, a readable view to the sink.

The container is attached to before it starts, so the log gets exactly the
bytes the job wrote (stdout and stderr interleaved as the engine multiplexes
them), binary or not. The engine's log endpoint is not used for new
containers: its default json-file driver replaces invalid UTF-8 and splits
long lines. Chunks go to the file in large batches from a worker thread;
the event loop only splits lines for the few that reach the terminal
(:mod:`caliban.core.output`), so a job printing tens of MB costs about what
copying them costs.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from caliban.adapters import filemodes
from caliban.adapters.docker import errors, status_of
from caliban.core.output import OutputView
from caliban.errors import BackendError
from caliban.events import JobOutput, JobOutputSkipped, Sink

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from caliban.platforms.local.engineapi import Container

# Chunks waiting for the log writer, and how much one write takes at most.
QUEUE_CHUNKS = 64
WRITE_BATCH = 1 << 20
READ_CHUNK = 1 << 16

Start = Callable[[], Awaitable[None]]
OnData = Callable[[int, bytes], Awaitable[None]]


def open_log(path: Path) -> BinaryIO:
    """Open (append) a job's log, private to its owner: output may hold secrets."""
    return filemodes.open_log_bytes(path)


async def pump(
    container: Container,
    *,
    start: Start | None,
    sink: Sink,
    job_id: str,
    label: str,
    log_path: Path | None,
    view: OutputView | None = None,
) -> None:
    """Follow a container's output until it ends.

    ``start``: the container is not running yet; it is attached to first and
    then started with this, so nothing it writes is missed. ``None``: it was
    started earlier (an adopted job) and its output is read from the engine's
    log, from the beginning.
    """
    view = view or OutputView()
    shown_log = str(log_path) if log_path is not None else None

    def emit(items: list[str | int]) -> None:
        for item in items:
            if isinstance(item, str):
                sink(JobOutput(job_id, label, item))
            else:
                sink(JobOutputSkipped(job_id, label, item, shown_log))

    log = await _open(log_path) if log_path is not None else None
    send, receive = anyio.create_memory_object_stream[bytes](QUEUE_CHUNKS)

    def batch(first: bytes) -> bytes:
        # Whatever has piled up goes in one write: few thread hops under a
        # flood, no delay when the job prints a line now and then.
        chunks, size = [first], len(first)
        while size < WRITE_BATCH:
            try:
                chunk = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def write_log() -> None:
        assert log is not None
        async for first in receive:
            await anyio.to_thread.run_sync(log.write, batch(first))

    async def on_data(stream: int, data: bytes) -> None:
        if log is not None:
            await send.send(data)
        emit(view.feed(data, anyio.current_time(), stream))

    try:
        try:
            async with anyio.create_task_group() as tg:
                if log is not None:
                    tg.start_soon(write_log)
                async with send:
                    if start is not None:
                        await _attached(container, start, on_data)
                    else:
                        await _from_engine_log(container, on_data)
        except BaseExceptionGroup as group:
            # The writer task is an implementation detail: callers catch the
            # BackendError or DockerError itself, as before it existed.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        emit(view.close())
    finally:
        with anyio.CancelScope(shield=True):
            if log is not None:
                # Interrupted: what was read is still written before the log closes.
                rest = b"".join(_pending(receive))
                await anyio.to_thread.run_sync(_write_and_close, log, rest)
            receive.close()


def _pending(receive: MemoryObjectReceiveStream[bytes]) -> list[bytes]:
    chunks = []
    while True:
        try:
            chunks.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return chunks


def _write_and_close(log: BinaryIO, data: bytes) -> None:
    with log:
        if data:
            log.write(data)


async def _open(path: Path) -> BinaryIO:
    try:
        return await anyio.to_thread.run_sync(open_log, path)
    except OSError as exc:
        raise BackendError(
            f"cannot write the job's log {path}: {exc.strerror or exc}",
            hint="check that CALIBAN_HOME is writable",
        ) from exc


async def _attached(container: Container, start: Start, on_data: OnData) -> None:
    try:
        async with container.attach(stdout=True, stderr=True) as stream:
            await start()
            while (message := await stream.read_out()) is not None:
                await on_data(message.stream, message.data)
    except errors() as exc:
        if status_of(exc) != 404:  # removed by `caliban stop` from elsewhere
            raise


async def _from_engine_log(container: Container, on_data: OnData) -> None:
    # aiodocker decodes the log endpoint's frames; what the json-file driver
    # stores is valid UTF-8 already, so encoding it again gives back its bytes.
    try:
        async for text in container.log(stdout=True, stderr=True, follow=True):
            await on_data(1, text.encode("utf-8"))
    except errors() as exc:
        if status_of(exc) != 404:  # removed by `caliban stop` from elsewhere
            raise


async def read_log(path: Path) -> AsyncIterator[str]:
    """A finished job's log as text, in bounded pieces whatever its lines look like."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    async with await anyio.open_file(path, "rb") as f:
        while chunk := await f.read(READ_CHUNK):
            if text := decoder.decode(chunk):
                yield text
    if rest := decoder.decode(b"", final=True):
        yield rest
