"""Which CPU cores sit next to which GPU, and how a job's cores are chosen.

Pure: parses the text of ``nvidia-smi topo -m`` and CPU lists, and decides
allocations. The pool in :mod:`caliban.limits` calls :func:`choose` under its
lock; nothing here waits or reads the machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GPU_ROW = re.compile(r"GPU(\d+)$")


@dataclass(frozen=True)
class GpuAffinity:
    """The cores (and NUMA node, when the driver says) nearest one GPU."""

    cpus: frozenset[int]
    numa: int | None = None


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``0-3,8,10-11`` (the kernel's list format) -> sorted core numbers."""
    cores: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ValueError(f"{part!r} is not a CPU number or range")
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if high < low:
            raise ValueError(f"{part!r}: range runs backwards")
        cores.update(range(low, high + 1))
    return tuple(sorted(cores))


def format_cpu_list(cores: Iterable[int]) -> str:
    """Sorted cores in the compact form Docker's CpusetCpus and the kernel both read."""
    out: list[str] = []
    ordered = sorted(set(cores))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def _cells(line: str) -> list[str]:
    # nvidia-smi separates columns by tabs; a copy pasted from a terminal may
    # have turned them into runs of spaces (column names have single spaces).
    parts = line.split("\t") if "\t" in line else re.split(r" {2,}", line)
    return [p.strip() for p in parts]


def parse_topology(text: str) -> dict[str, GpuAffinity]:
    """GPU index -> its CPU and NUMA affinity, from ``nvidia-smi topo -m`` output.

    Raises ValueError when the text has no affinity table at all.
    """
    lines = [_ANSI.sub("", line).rstrip("\n") for line in text.splitlines()]
    header_at = next((i for i, line in enumerate(lines) if "CPU Affinity" in line), None)
    if header_at is None:
        raise ValueError("no 'CPU Affinity' column in the topology")
    header = _cells(lines[header_at])
    cpu_col = header.index("CPU Affinity")
    numa_col = header.index("NUMA Affinity") if "NUMA Affinity" in header else None
    found: dict[str, GpuAffinity] = {}
    for line in lines[header_at + 1 :]:
        if not line.strip() or line.startswith("Legend"):
            if found:
                break
            continue
        cells = _cells(line)
        m = _GPU_ROW.fullmatch(cells[0])
        if m is None:
            continue  # a NIC's row
        if len(cells) <= cpu_col:
            raise ValueError(f"row {cells[0]} has no CPU Affinity cell")
        cpu_text = cells[cpu_col]
        cpus = frozenset(parse_cpu_list(cpu_text)) if cpu_text not in ("N/A", "") else frozenset()
        numa: int | None = None
        if numa_col is not None and len(cells) > numa_col and cells[numa_col].isdigit():
            numa = int(cells[numa_col])
        found[m.group(1)] = GpuAffinity(cpus, numa)
    if not found:
        raise ValueError("no GPU rows in the topology")
    return found


@dataclass(frozen=True)
class Choice:
    gpus: tuple[str, ...]
    cpus: tuple[int, ...]
    # Set when every chosen core lies in one NUMA node the driver named, so
    # the job's memory can be kept on that node too.
    numa: int | None = None


def choose(
    free_gpus: Sequence[str],
    gpus: int,
    free_cpus: Iterable[int],
    cpus: int,
    affinity: Mapping[str, GpuAffinity] | None = None,
) -> Choice | None:
    """What a job asking for ``gpus`` GPUs and ``cpus`` cores gets now, or None.

    ``free_gpus`` in the order they are handed out; ``affinity`` keyed by GPU id.
    First choice: GPUs that share one affinity (a socket or NUMA node) with
    enough free cores there. Otherwise the first free GPUs, with their
    nearest cores first and the lowest-numbered others after. Never None while
    enough of both are free: a job does not wait for a better placement.
    """
    free_c = sorted(set(free_cpus))
    if len(free_gpus) < gpus or len(free_c) < cpus:
        return None
    aff = affinity or {}
    if cpus == 0:
        return Choice(tuple(free_gpus[:gpus]), ())
    if gpus == 0:
        return Choice((), tuple(free_c[:cpus]))
    free_set = set(free_c)
    groups: dict[GpuAffinity, list[str]] = {}
    for gpu in free_gpus:
        near = aff.get(gpu)
        if near is not None and near.cpus:
            groups.setdefault(near, []).append(gpu)
    for near, members in groups.items():
        local = sorted(near.cpus & free_set)
        if len(members) >= gpus and len(local) >= cpus:
            return Choice(tuple(members[:gpus]), tuple(local[:cpus]), near.numa)
    held = tuple(free_gpus[:gpus])
    nearest: set[int] = set()
    for gpu in held:
        near = aff.get(gpu)
        if near is not None:
            nearest |= near.cpus
    first = [c for c in free_c if c in nearest][:cpus]
    rest = [c for c in free_c if c not in nearest][: cpus - len(first)]
    return Choice(held, tuple(sorted(first + rest)))
