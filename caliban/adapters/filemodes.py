"""Files caliban keeps for its user alone: the store and the job logs.

The history holds commands, arguments and container specs; logs hold whatever
jobs print. Neither is anybody else's business on a shared machine, so files
are created 0600 and folders 0700, and what an older version left readable is
tightened when the store opens. Blocking functions; call them from a thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO, BinaryIO

import anyio

FILE_MODE = 0o600
DIR_MODE = 0o700

# SQLite's side files next to the database (write-ahead log, shared memory, journal).
SIDE_FILES = ("-wal", "-shm", "-journal")


def _tighten(path: Path, mode: int) -> None:
    """Drop group/other bits of ``path`` if it is ours; tolerate it vanishing."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
            return
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077 | mode)


def private_dirs(path: Path, *, keep: Path | None = None) -> None:
    """Make ``path`` and its missing parents, each new one 0700.

    Existing folders below ``keep`` (exclusive) are tightened too: they are
    caliban's own. ``keep`` and above are left as they are, except as created.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        _tighten(folder, DIR_MODE)
    if keep is not None:
        current = path
        while current != keep and keep in current.parents:
            _tighten(current, DIR_MODE)
            current = current.parent


def create_private(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists; tighten it if it does.

    SQLite gives its -wal and -shm files the database file's mode, so a
    database created here keeps its side files private too.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    _tighten(path, FILE_MODE)


def _empty(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def secure_store(db: Path) -> None:
    """Before opening the store: its folder, the database and its side files are private.

    ``CALIBAN_HOME`` is tightened when caliban creates it or it already holds
    caliban's files (``caliban.db``, ``logs/``) or nothing; a folder the user pointed
    ``CALIBAN_HOME`` at for other purposes is left alone (the files in it are
    private anyway). ``logs/`` left readable by an older version is tightened
    once, recursively; afterwards its own mode says it is done.
    """
    home = db.parent
    ours = not home.exists() or db.exists() or (home / "logs").is_dir() or _empty(home)
    private_dirs(home)
    if ours:
        _tighten(home, DIR_MODE)
    create_private(db)
    tighten_side_files(db)
    logs = home / "logs"
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(logs.lstat().st_mode) & 0o077:
            for root, dirs, files in os.walk(logs):
                for name in files:
                    _tighten(Path(root, name), FILE_MODE)
                for name in dirs:
                    _tighten(Path(root, name), DIR_MODE)
            _tighten(logs, DIR_MODE)


def tighten_side_files(db: Path) -> None:
    for suffix in SIDE_FILES:
        _tighten(db.with_name(db.name + suffix), FILE_MODE)


def _private_fd(path: Path, flags: int) -> int:
    # In caliban's layout (<home>/logs/<xgroup>/<job>.log) the xgroup folder and
    # logs/ are its own and are tightened; any other folder is only created.
    layout = path.parent.parent.name == "logs"
    private_dirs(path.parent, keep=path.parent.parent.parent if layout else None)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_log(path: Path, mode: str) -> IO[str]:
    fd = _private_fd(path, os.O_APPEND if mode == "a" else os.O_TRUNC)
    try:
        return open(fd, mode, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def open_log_bytes(path: Path) -> BinaryIO:
    """A job's log for appending raw bytes, unbuffered, 0600 in 0700 folders (blocking)."""
    return os.fdopen(_private_fd(path, os.O_APPEND), "ab", buffering=0)


async def open_log(path: Path, mode: str = "a") -> anyio.AsyncFile[str]:
    """A job's log file, opened for writing (``"a"`` or ``"w"``), 0600 in 0700 folders."""
    return anyio.wrap_file(await anyio.to_thread.run_sync(_open_log, path, mode))


async def write_log(path: Path, text: str) -> None:
    """Replace a job's log with ``text``, privately."""
    async with await open_log(path, "w") as f:
        await f.write(text)
