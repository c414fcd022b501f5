"""Which CPU cores caliban may give jobs, and which lie nearest each GPU.

``CALIBAN_SIMULATED_CPUS`` (a CPU list such as ``0-63``) declares cores that
exist only on paper, like ``CALIBAN_SIMULATED_GPUS``: jobs are scheduled and
recorded against them, but containers get no cpuset. ``CALIBAN_GPU_TOPOLOGY``
names a file holding ``nvidia-smi topo -m`` output, read instead of asking
nvidia-smi (tests, or a machine whose driver cannot be asked).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from caliban.core import topology
from caliban.core.topology import GpuAffinity
from caliban.errors import ValidationError

SIMULATED_ENV = "CALIBAN_SIMULATED_CPUS"
TOPOLOGY_ENV = "CALIBAN_GPU_TOPOLOGY"


@dataclass(frozen=True)
class CpuInventory:
    cores: tuple[int, ...]
    simulated: bool = False
    # Physical GPU index (a `nvidia-smi topo -m` row) -> its nearest cores.
    affinity: Mapping[str, GpuAffinity] = field(default_factory=dict)


def _cores(env: Mapping[str, str]) -> tuple[tuple[int, ...], bool]:
    declared = env.get(SIMULATED_ENV, "").strip()
    if declared:
        try:
            cores = topology.parse_cpu_list(declared)
        except ValueError as exc:
            raise ValidationError(f"{SIMULATED_ENV}: {exc}") from None
        if not cores:
            raise ValidationError(f"{SIMULATED_ENV}: no CPU listed")
        return cores, True
    # The cores this process may run on: a cgroup or `taskset` may allow fewer
    # than the machine has, and the engine refuses a cpuset outside its own.
    return tuple(sorted(os.sched_getaffinity(0))), False


async def _topology_text(env: Mapping[str, str], ask_driver: bool) -> str:
    path = env.get(TOPOLOGY_ENV, "").strip()
    if path:
        try:
            return await anyio.Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"{TOPOLOGY_ENV}: cannot read {path}: {exc}") from None
    if not ask_driver:
        return ""
    try:
        with anyio.fail_after(20):
            result = await anyio.run_process(["nvidia-smi", "topo", "-m"], check=False)
    except (OSError, TimeoutError):
        return ""
    return result.stdout.decode(errors="replace") if result.returncode == 0 else ""


def _node(numa: int | None, simulated: bool) -> int | None:
    # A node the kernel does not have (a topology file from another machine)
    # would make the engine refuse the container's cpuset.mems.
    if numa is None or simulated or not Path(f"/sys/devices/system/node/node{numa}").is_dir():
        return None
    return numa


async def detect(environ: Mapping[str, str] | None = None, *, gpus: bool = False) -> CpuInventory:
    """``gpus``: real GPUs are in use, so their topology is worth asking for."""
    env = os.environ if environ is None else environ
    cores, simulated = _cores(env)
    text = await _topology_text(env, ask_driver=gpus)
    affinity: dict[str, GpuAffinity] = {}
    if text:
        try:
            parsed = topology.parse_topology(text)
        except ValueError as exc:
            if env.get(TOPOLOGY_ENV, "").strip():
                raise ValidationError(f"{TOPOLOGY_ENV}: {exc}") from None
            parsed = {}  # an old driver's odd output costs placement, not the run
        usable = set(cores)
        affinity = {
            gpu: GpuAffinity(a.cpus & usable, _node(a.numa, simulated))
            for gpu, a in parsed.items()
            if a.cpus & usable
        }
    return CpuInventory(cores, simulated, affinity)
