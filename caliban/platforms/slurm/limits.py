"""What a cluster allows, checked before anything is sent (pure).

``scontrol show partition -o`` and ``scontrol show node -o`` answers are read
into partitions and their limits; a request that asks for more than any of
them offers (time, GPUs per node) or that sets what caliban owns in
``--sbatch_args`` is a :class:`~caliban.errors.ValidationError`, one line.

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from caliban.errors import ValidationError
from caliban.platforms.slurm.spec import OWNED_OPTIONS, Resources

_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_minutes(text: str) -> float | None:
    """Slurm's time syntax (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``) in minutes; None for UNLIMITED/INFINITE."""
    t = text.strip()
    if t.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    m = _TIME.fullmatch(t)
    if not m:
        raise ValidationError(
            f"--time {text!r} is not a Slurm time (MINUTES, HH:MM:SS or DAYS-HH:MM:SS)"
        )
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        hours, mins, secs = int(a), int(b or 0), int(c or 0)
        return int(days) * 1440 + hours * 60 + mins + secs / 60
    if c is not None:  # H:M:S
        return int(a) * 60 + int(b) + int(c) / 60
    if b is not None:  # M:S
        return int(a) + int(b) / 60
    return float(a)


_MEM = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_minutes: float | None
    allow_qos: tuple[str, ...] | None  # None: ALL
    nodes: str


def parse_key_values(line: str) -> dict[str, str]:
    """One ``scontrol show ... -o`` / jobcomp line as a dict (``Key=Value`` words)."""
    out: dict[str, str] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep and key:
            out[key] = value
    return out


def parse_partitions(text: str) -> dict[str, Partition]:
    out: dict[str, Partition] = {}
    for line in text.splitlines():
        kv = parse_key_values(line)
        name = kv.get("PartitionName")
        if not name:
            continue
        qos = kv.get("AllowQos", "ALL")
        out[name] = Partition(
            name=name,
            default=kv.get("Default") == "YES",
            max_minutes=parse_minutes(kv.get("MaxTime", "UNLIMITED")),
            allow_qos=None if qos == "ALL" else tuple(qos.split(",")),
            nodes=kv.get("Nodes", ""),
        )
    return out


_GPU_GRES = re.compile(r"gpu(?::[^:(,]+)?:(\d+)")


def max_gpus_per_node(scontrol_nodes: str) -> int:
    """The most GPUs any node offers (``Gres=gpu:4`` or ``gpu:a100:4(S:0-1)``)."""
    best = 0
    for line in scontrol_nodes.splitlines():
        gres = parse_key_values(line).get("Gres", "")
        for part in gres.split(","):
            m = _GPU_GRES.match(part)
            if m:
                best = max(best, int(m.group(1)))
    return best


def check_resources(
    resources: Resources,
    partitions: Mapping[str, Partition],
    *,
    max_gpus: int,
    qos_names: Sequence[str] | None,
) -> Partition:
    """Refuse what the cluster cannot run, naming what it has. ``qos_names`` None:
    the cluster keeps no accounting, so it has no QOS."""
    check_syntax(resources)
    if resources.partition is not None:
        part = partitions.get(resources.partition)
        if part is None:
            names = ", ".join(sorted(partitions)) or "none"
            raise ValidationError(
                f"unknown partition {resources.partition!r}; this cluster has: {names}"
            )
    else:
        defaults = [p for p in partitions.values() if p.default]
        if not defaults:
            raise ValidationError(
                "the cluster has no default partition; choose one with --partition "
                f"({', '.join(sorted(partitions)) or 'none'})"
            )
        part = defaults[0]
    if resources.time is not None:
        minutes = parse_minutes(resources.time)
        if part.max_minutes is not None and (minutes is None or minutes > part.max_minutes):
            raise ValidationError(
                f"--time {resources.time} is more than partition {part.name} allows "
                f"({format_minutes(part.max_minutes)})"
            )
    if resources.gpus_per_job and resources.gpus_per_job > max_gpus:
        raise ValidationError(
            f"--gpus_per_job {resources.gpus_per_job} is more than any node has ({max_gpus})"
        )
    if resources.qos is not None:
        if qos_names is None:
            raise ValidationError(
                f"unknown QOS {resources.qos!r}: this cluster keeps no accounting "
                "(no slurmdbd), so it has no QOS"
            )
        if resources.qos not in qos_names:
            raise ValidationError(
                f"unknown QOS {resources.qos!r}; this cluster has: "
                f"{', '.join(sorted(qos_names)) or 'none'}"
            )
        if part.allow_qos is not None and resources.qos not in part.allow_qos:
            raise ValidationError(
                f"partition {part.name} does not allow QOS {resources.qos!r} "
                f"(it allows: {', '.join(part.allow_qos)})"
            )
    return part


def check_syntax(resources: Resources) -> None:
    """What can be refused without asking the cluster."""
    if resources.time is not None:
        parse_minutes(resources.time)
    if resources.mem is not None and not _MEM.fullmatch(resources.mem):
        raise ValidationError(f"--mem {resources.mem!r} is not a Slurm size such as 4G or 500M")
    if resources.gpu_flag not in ("gres", "gpus"):
        raise ValidationError(f"GPU flag {resources.gpu_flag!r}: use 'gres' or 'gpus'")
    for arg in resources.sbatch_args:
        option = arg.split("=", 1)[0]
        if option in OWNED_OPTIONS:
            raise ValidationError(
                f"--sbatch_args may not set {option}: caliban sets it "
                "(use --max_parallel for the array's limit)"
            )


def format_minutes(minutes: float) -> str:
    whole = int(minutes)
    days, rest = divmod(whole, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text
