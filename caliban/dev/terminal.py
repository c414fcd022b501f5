"""Wiring this terminal to a container's TTY: raw mode, keys in, output out,
window resizes and hang-ups forwarded.

Used by ``caliban shell``. Reads and writes go straight to the file
descriptors, waited on with anyio so the event loop never blocks on the
terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING

import aiohttp
import anyio
from aiodocker.exceptions import DockerError

from caliban.adapters import docker as engine
from caliban.errors import BackendError

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.stream import Stream

# A shell whose terminal is gone gets SIGHUP (bash saves its history then) and
# this long to exit before it is killed.
HANGUP_GRACE = 3.0


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal in raw mode (no echo, no line editing, no signals from
    keys): the container's own TTY does all of that. Restored on any exit."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):  # a terminal that hung up
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def flush_stdout() -> None:
    # The banner went through Python's buffered stdout; the session writes to
    # the file descriptor directly and must not overtake it.
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()


async def converse(
    container: aiodocker.docker.DockerContainer, stream: Stream, stdin_fd: int, stdout_fd: int
) -> None:
    """Pump keys to the container and its output to the terminal until it exits."""
    size_fd = stdout_fd if os.isatty(stdout_fd) else stdin_fd
    async with anyio.create_task_group() as tg:
        tg.start_soon(_keyboard, container, stream, stdin_fd)
        tg.start_soon(_signals, container, size_fd)
        # Right after start: the shell reads its size when it draws the prompt.
        await _resize(container, size_fd)
        while True:
            try:
                message = await stream.read_out()
            except (aiohttp.ClientError, ConnectionError):
                break
            if message is None:  # the container exited and the daemon closed the stream
                break
            try:
                await _write_all(stdout_fd, message.data)
            except OSError:  # our terminal is gone
                await _signal(container, "SIGHUP")
                break
        tg.cancel_scope.cancel()


async def _keyboard(container: aiodocker.docker.DockerContainer, stream: Stream, fd: int) -> None:
    while True:
        # wait_readable polls the fd on the event loop; the read after it
        # returns at once (raw mode, VMIN=1: whatever bytes are there).
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:  # EIO: the terminal hung up
            data = b""
        if not data:
            await _signal(container, "SIGHUP")
            return
        try:
            await stream.write_in(data)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return  # the container is gone; the output side ends the session


async def _signals(container: aiodocker.docker.DockerContainer, size_fd: int) -> None:
    """Forward window size changes; a hangup of our terminal hangs up the shell."""
    with contextlib.ExitStack() as stack:
        try:
            signals = stack.enter_context(
                anyio.open_signal_receiver(signal.SIGWINCH, signal.SIGHUP)
            )
        except (ValueError, RuntimeError, NotImplementedError):
            return  # not the main thread: no signal handling, no live resizing
        async for signum in signals:
            if signum == signal.SIGWINCH:
                await _resize(container, size_fd)
            else:
                await _signal(container, "SIGHUP")


async def _resize(container: aiodocker.docker.DockerContainer, fd: int) -> None:
    try:
        columns, lines = os.get_terminal_size(fd)
    except OSError:
        return
    with contextlib.suppress(DockerError):  # a container that just exited
        await container.resize(h=lines, w=columns)


async def _signal(container: aiodocker.docker.DockerContainer, name: str) -> None:
    with contextlib.suppress(DockerError):
        await container.kill(signal=name)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        await anyio.wait_writable(fd)
        try:
            written = os.write(fd, view)
        except (BlockingIOError, InterruptedError):
            continue
        view = view[written:]


async def hang_up_and_remove(container: aiodocker.docker.DockerContainer) -> None:
    """A still-running shell (caliban was interrupted) gets SIGHUP first, like a
    closed terminal, so it saves its history; then the container is removed."""
    try:
        info = await container.show()
        if info["State"]["Running"]:
            await _signal(container, "SIGHUP")
            with anyio.move_on_after(HANGUP_GRACE), contextlib.suppress(DockerError):
                await container.wait()
        await container.delete(force=True, v=True)
    except DockerError as exc:
        if exc.status not in (404, 409):  # gone already, or removal in progress
            raise BackendError(
                f"could not remove container {container.id[:12]}: {engine.error_text(exc)}"
            ) from exc
