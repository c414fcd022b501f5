"""Where a sweep's code came from: git state, image digests, caliban version, command line.

Collected by the engine (:func:`caliban.sweep.engine.submit`) for every platform
and stored with the jobs when they are planned. Git runs as a subprocess through
anyio, off the event loop; no git, a folder outside any repository or a git that
refuses (another owner's repository) give ``"git": null``, never an error: a
sweep does not need git to run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from caliban.version import __version__

#: The characters of the commit a cloud job carries as a label.
SHORT_COMMIT = 12
# Whatever git does here, it must not wait for a person or take the index lock
# (`git status` refreshes the index otherwise, racing the user's own git).
_GIT_ENV = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


async def _git(folder: Path, *args: str) -> bytes | None:
    try:
        done = await anyio.run_process(
            ["git", "-C", str(folder), *args],
            check=False,
            env={**os.environ, **_GIT_ENV},
            stdin=subprocess.DEVNULL,
        )
    except OSError:  # no git on PATH
        return None
    return done.stdout if done.returncode == 0 else None


async def git_state(folder: Path) -> dict[str, object] | None:
    """Commit, branch, dirty flag and a hash of the uncommitted changes of ``folder``.

    ``diff_sha256`` covers ``git diff HEAD`` (staged and unstaged changes, binary
    too) and the names and sizes of untracked files that are not ignored: two
    runs with the same value ran the same tracked changes.
    """
    commit = await _git(folder, "rev-parse", "--verify", "HEAD")
    if commit is None:
        return None
    branch = (await _git(folder, "rev-parse", "--abbrev-ref", "HEAD") or b"").decode().strip()
    status = await _git(folder, "status", "--porcelain", "--untracked-files=normal")
    dirty = bool(status and status.strip())
    diff_hash = None
    if dirty:
        h = hashlib.sha256()
        h.update(await _git(folder, "diff", "HEAD", "--binary") or b"")
        top = Path((await _git(folder, "rev-parse", "--show-toplevel") or b"").decode().strip())
        untracked = await _git(
            folder, "ls-files", "--others", "--exclude-standard", "-z", "--full-name"
        )
        for name in sorted(n for n in (untracked or b"").split(b"\0") if n):
            size = await anyio.to_thread.run_sync(_size, top / os.fsdecode(name))
            h.update(b"\0untracked\0" + name + f"\0{size}".encode())
        diff_hash = h.hexdigest()
    return {
        "commit": commit.decode().strip(),
        "branch": None if branch in ("", "HEAD") else branch,
        "dirty": dirty,
        "diff_sha256": diff_hash,
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


async def image_digest(
    find_image: Callable[[str], Awaitable[dict[str, Any] | None]], ref: str
) -> str | None:
    """The registry digest of a local image (``RepoDigests``), else its image id.
    ``find_image``: the session's inspect (None when there is no such image)."""
    from caliban.adapters.docker import errors

    try:
        info = await find_image(ref)
    except errors():  # unknown, not an error
        return None
    if info is None:  # gone since the build
        return None
    digests = info.get("RepoDigests") or []
    if digests:
        return str(digests[0]).rsplit("@", 1)[-1]
    image_id = info.get("Id")
    return str(image_id) if image_id else None


def record(
    *,
    platform: str,
    git: Mapping[str, object] | None,
    image: str,
    image_digest: str | None,
    image_id: str | None,
    base_image: str | None,
    base_image_digest: str | None,
    argv: Sequence[str] | None,
    cwd: str | None,
    entry: str | None,
) -> dict[str, object]:
    """The provenance of one submission, as stored and as ``status --json`` shows it."""
    return {
        "caliban_version": __version__,
        "platform": platform,
        "git": dict(git) if git is not None else None,
        "image": image,
        "image_digest": image_digest,
        "image_id": image_id,
        "base_image": base_image,
        "base_image_digest": base_image_digest,
        "command": list(argv) if argv is not None else None,
        "entry": entry,
        "cwd": cwd,
    }


def short_commit(provenance: Mapping[str, object] | None) -> str | None:
    git = provenance.get("git") if provenance else None
    commit = git.get("commit") if isinstance(git, Mapping) else None
    return str(commit)[:SHORT_COMMIT] if commit else None


def registry_digest(ref: str) -> str | None:
    """``sha256:...`` of a reference pinned by digest (what a push returns), else None."""
    _, sep, digest = ref.rpartition("@")
    return digest if sep and digest.startswith("sha256:") else None
