"""Pre-warmed starts: a job's container created and started before its slot is free.

Starting a container (its network namespace above all) costs 0.3-0.8 s, which
a plain start puts between one job's end and the next one's beginning. By
default (``CALIBAN_PREWARM=0`` turns it off) each slot's next container is
created and started while the slot's current job runs, its process blocked in
a small static helper (``gate.c``, compiled once with the host's C compiler and
cached) that reads a FIFO before it runs the job's argv. Opening that gate is all that is left on
the critical path; the helper writes the job's exit status to a second FIFO
once the job and everything it left behind are gone, so the slot goes on at
once while the log's end and the removal happen in the background; once the log
has ended, that status is the job's recorded exit code (the engine's wait,
which also waits for the network's teardown, is not needed).

The helper is bind-mounted read-only with the two FIFOs, so nothing is needed in
the image (no shell). Plain starts are used instead when the helper cannot be
built (no C compiler or static C library), the engine is not on this machine, or a
job's container would share a PID namespace or has a TTY.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import platform
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

# Set on every pre-warmed container: one whose job was still PLANNED when it went
# away never ran (the gate is opened before RUNNING is recorded).
GATE_LABEL = "caliban.gate"
MOUNT = "/.caliban-gate"
ENV_SWITCH = "CALIBAN_PREWARM"
# What the helper says, and exits with, when caliban died before opening its gate.
NEVER_RAN = "caliban gate: caliban is gone, the job was not started"
NEVER_RAN_CODE = 125


def wanted(environ: Mapping[str, str]) -> bool:
    """On unless ``CALIBAN_PREWARM=0`` (benchmarks/local_prewarm.py: faster than
    plain starts and than raw ``docker run`` loops on the bridge network)."""
    return environ.get(ENV_SWITCH, "") != "0"


def asked(environ: Mapping[str, str]) -> bool:
    """Pre-warmed starts asked for by name: their absence is worth a warning."""
    return environ.get(ENV_SWITCH, "") == "1"


def local_engine(environ: Mapping[str, str]) -> bool:
    """Bind-mounted FIFOs only work when the engine shares this machine's files."""
    host = environ.get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


def _cache_dir(environ: Mapping[str, str]) -> Path:
    # The same cache scripts/base-image.sh uses.
    if environ.get("CALIBAN_CACHE"):
        return Path(environ["CALIBAN_CACHE"])
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "caliban"


def build_helper(environ: Mapping[str, str]) -> Path | None:
    """The static gate helper, compiled on first use (None: it cannot be built here)."""
    source = resources.files("caliban.platforms.local").joinpath("gate.c").read_bytes()
    digest = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    target = _cache_dir(environ) / f"gate-{platform.machine()}-{digest}"
    if target.is_file():
        return target
    compiler = environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        src = Path(work) / "gate.c"
        src.write_bytes(source)
        out = Path(work) / "gate"
        try:
            subprocess.run(
                [compiler, "-static", "-Os", "-s", "-o", str(out), str(src)],
                capture_output=True,
                check=True,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        out.chmod(0o755)
        os.replace(out, target)  # atomic: concurrent runs agree on one file
    return target


def gateable(config: Mapping[str, Any]) -> bool:
    host = config.get("HostConfig") or {}
    # The helper's final kill(-1) must only ever reach the container's own processes.
    return not host.get("PidMode") and not config.get("Tty")


def gated_config(
    config: Mapping[str, Any], image: Mapping[str, Any], directory: Path
) -> dict[str, Any] | None:
    """``config`` with the helper in front of the argv the engine would run (None:
    there is no argv to run). ``image``: the image's own Config from an inspect,
    so its ENTRYPOINT and CMD are combined as the engine combines them."""
    entry = config.get("Entrypoint")
    cmd = config.get("Cmd") or []
    if entry is None:
        entry = image.get("Entrypoint") or []
        cmd = cmd or image.get("Cmd") or []
    argv = [*entry, *cmd]
    if not argv:
        return None
    out = copy.deepcopy(dict(config))
    out["Entrypoint"] = [f"{MOUNT}/gate", MOUNT]
    out["Cmd"] = argv
    out["Labels"] = {**out.get("Labels", {}), GATE_LABEL: "1"}
    host = out.setdefault("HostConfig", {})
    mount = {"Type": "bind", "Source": str(directory), "Target": MOUNT, "ReadOnly": True}
    host["Mounts"] = [*host.get("Mounts", []), mount]
    return out


class Gate:
    """One container's pair of FIFOs, held open by this process from before the
    container exists, so neither side ever blocks on open, and this process's
    death opens nothing: the helper then reads EOF and exits without running the
    job. The helper's first byte on ``done`` says it holds ``go`` open (a byte
    written before that would die with this process); its second is the job's
    exit status."""

    ARMED = b"r"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._go = os.open(directory / "go", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._done = os.open(directory / "done", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._armed = False
        self.released = False

    async def _byte(self) -> int:
        while True:
            await anyio.wait_readable(self._done)
            with contextlib.suppress(BlockingIOError):
                data = os.read(self._done, 1)
                if data:
                    return data[0]

    async def armed(self) -> None:
        """Until the helper waits on the gate."""
        if not self._armed:
            first = await self._byte()
            if bytes([first]) != self.ARMED:
                raise RuntimeError(f"caliban's gate helper sent {first!r} before arming")
            self._armed = True

    def release(self) -> None:
        self.released = True
        os.write(self._go, b"g")

    async def ended(self) -> int:
        """The job's exit status as the helper saw it, once it and its leftovers are gone."""
        await self.armed()
        return await self._byte()

    def ended_now(self) -> int | None:
        """The job's exit status if the helper has written it by now (None: not yet,
        or the gate was never armed)."""
        if not self._armed:
            return None
        try:
            data = os.read(self._done, 1)
        except OSError:  # nothing written yet (BlockingIOError), or closed
            return None
        return data[0] if data else None

    def close(self) -> None:
        for fd in (self._go, self._done):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.directory, ignore_errors=True)


class Gates:
    """The FIFO directories of one run, under one private directory.

    The directory is traversable but not listable, and each container's
    directory has an unguessable name: only this process and that container
    can reach its FIFOs (whatever user the container runs as)."""

    def __init__(self, helper: Path) -> None:
        self.helper = helper
        self.root = Path(tempfile.mkdtemp(prefix="caliban-gates-"))
        self.root.chmod(0o711)

    def make(self) -> Gate:
        directory = self.root / secrets.token_hex(16)
        directory.mkdir()
        directory.chmod(0o755)
        try:
            os.link(self.helper, directory / "gate")
        except OSError:  # another file system: a copy does as well
            shutil.copy2(self.helper, directory / "gate")
        for name in ("go", "done"):
            os.mkfifo(directory / name)
            os.chmod(directory / name, 0o666)
        return Gate(directory)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


async def open_gates(environ: Mapping[str, str]) -> Gates | None:
    """This run's gates when pre-warmed starts are asked for and possible here."""
    if not wanted(environ) or not local_engine(environ):
        return None
    helper = await anyio.to_thread.run_sync(build_helper, environ)
    return Gates(helper) if helper is not None else None
