"""Where and how Vertex places a CustomJob: strategy, reservations, persistent
resources, timeouts and retries, and the capacity ladder built from them. Pure.

Each refusal names the combination and what to do instead: Vertex would
otherwise accept a body and leave the job waiting, or reject it with a 400
after the image was built and pushed.

What Google documents and this module enforces:

* ``scheduling.strategy`` is STANDARD, SPOT or FLEX_START; ``maxWaitDuration``
  only means something for FLEX_START (0: wait as long as it takes).
* Spot VMs and flex-start VMs never consume reservations, so a reservation
  excludes both.
* A job on a persistent resource runs on machines the resource already holds:
  strategy and reservation are the resource's, not the job's.
* Legacy TPU nodes (``cloud-tpu``, TPU_V2/V3) and TPU pods have no Spot or
  flex-start capacity.
* A specific reservation is named by its resource name,
  ``projects/P/zones/Z/reservations/N`` (``ZONE/NAME`` is expanded with the
  project); it is zonal, so the job's regions must contain its zone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from caliban.core.accelerators import AcceleratorSpec
from caliban.errors import ValidationError
from caliban.spec import StrEnum

RESERVATION_KEY = "compute.googleapis.com/reservation-name"
# A legacy TPU node or a pod slice: no Spot or flex-start capacity behind them.
_NO_PREEMPTIBLE_TPUS = frozenset({"TPU_V2", "TPU_V3", "TPU_V4_POD"})
_DURATION = re.compile(r"(\d+)([dhms])")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_RESOURCE_ID = re.compile(r"[a-z][a-z0-9-]{3,61}[a-z0-9]")
_RESERVATION = re.compile(
    r"projects/([a-z][a-z0-9-]{4,28}[a-z0-9])/zones/([a-z0-9-]+)/reservations/([a-z0-9-]+)"
)
_ZONE_NAME = re.compile(r"([a-z]+-[a-z]+[0-9]+-[a-z])/([a-z]([a-z0-9-]*[a-z0-9])?)")


class Strategy(StrEnum):
    STANDARD = "STANDARD"
    SPOT = "SPOT"
    FLEX_START = "FLEX_START"


def parse_duration(text: str, flag: str) -> int:
    """Seconds in ``90s``, ``30m``, ``2h``, ``1h30m``, ``1d`` or a plain number of seconds."""
    raw = text.strip().lower()
    if raw.isdigit():
        return int(raw)
    pos, total = 0, 0
    for m in _DURATION.finditer(raw):
        if m.start() != pos:
            break
        total += int(m[1]) * _UNIT[m[2]]
        pos = m.end()
    if not raw or pos != len(raw):
        raise ValidationError(
            f"{flag} {text!r}: not a duration; write it like 90s, 30m, 2h or 1h30m"
        )
    return total


def format_duration(seconds: int) -> str:
    """proto3 JSON's Duration: whole seconds with an ``s``."""
    return f"{int(seconds)}s"


@dataclass(frozen=True)
class Scheduling:
    """How one job is placed. ``strategy`` None leaves Vertex's default (STANDARD)."""

    strategy: Strategy | None = None
    max_wait_s: int | None = None
    timeout_s: int | None = None
    disable_retries: bool = False
    #: "any", or a reservation's full resource name.
    reservation: str | None = None
    persistent_resource: str | None = None

    def scheduling(self) -> dict[str, object]:
        """The ``jobSpec.scheduling`` fields this placement sets."""
        out: dict[str, object] = {}
        if self.strategy is not None:
            out["strategy"] = str(self.strategy)
        if self.strategy is Strategy.FLEX_START and self.max_wait_s is not None:
            out["maxWaitDuration"] = format_duration(self.max_wait_s)
        if self.timeout_s:
            out["timeout"] = format_duration(self.timeout_s)
        if self.disable_retries:
            out["disableRetries"] = True
        return out

    def reservation_affinity(self) -> dict[str, object] | None:
        """``machineSpec.reservationAffinity``, or None to leave it unset."""
        if self.reservation is None:
            return None
        if self.reservation == "any":
            return {"reservationAffinityType": "ANY_RESERVATION"}
        return {
            "reservationAffinityType": "SPECIFIC_RESERVATION",
            "key": RESERVATION_KEY,
            "values": [self.reservation],
        }


def reservation_name(value: str, *, project: str, flag: str = "--reservation") -> str:
    """``any`` or a reservation's resource name, from the forms a person writes."""
    if value == "any":
        return value
    if _RESERVATION.fullmatch(value):
        return value
    m = _ZONE_NAME.fullmatch(value)
    if m:
        return f"projects/{project}/zones/{m[1]}/reservations/{m[2]}"
    raise ValidationError(
        f"{flag} {value!r}: name the reservation as ZONE/NAME (e.g. us-central1-a/my-h100s),"
        " projects/P/zones/Z/reservations/N, or 'any'"
    )


def reservation_zone(name: str) -> str | None:
    m = _RESERVATION.fullmatch(name)
    return m[2] if m else None


def _tpu_type(accelerator: AcceleratorSpec | None) -> str | None:
    if accelerator is None or not accelerator.is_tpu:
        return None
    return accelerator.vertex_type or accelerator.type


def check(
    *,
    spot: bool = False,
    flex_start: bool = False,
    max_wait: str | None = None,
    reservation: str | None = None,
    persistent_resource: str | None = None,
    timeout: str | None = None,
    no_platform_retries: bool = False,
    accelerator: AcceleratorSpec | None = None,
    machine_type: str = "",
    project: str = "",
    regions: Sequence[str] = (),
    force: bool = False,
) -> Scheduling:
    """The placement flags of ``caliban cloud`` as a :class:`Scheduling`, or the
    first refused combination as a :class:`ValidationError`. ``force`` skips
    the accelerator check (what Google sells may have moved on)."""
    wait_s = parse_duration(max_wait, "--max_wait") if max_wait is not None else None
    timeout_s = parse_duration(timeout, "--timeout") if timeout is not None else None
    if timeout_s is not None and timeout_s <= 0:
        raise ValidationError("--timeout must be longer than 0s, e.g. --timeout 12h")
    if spot and flex_start:
        raise ValidationError(
            "--spot and --flex_start are two scheduling strategies; pick one "
            "(or use --capacity flex:2h,spot to try one after the other)"
        )
    if max_wait is not None and not flex_start:
        raise ValidationError(
            "--max_wait only applies to --flex_start; add --flex_start or drop it"
        )
    preemptible = "--spot" if spot else "--flex_start" if flex_start else None
    if reservation is not None and preemptible:
        raise ValidationError(
            f"{preemptible} VMs never use reservations; drop {preemptible} or --reservation"
        )
    if persistent_resource is not None:
        clash = preemptible or ("--reservation" if reservation is not None else None)
        if clash:
            raise ValidationError(
                f"--persistent_resource runs on the resource's own machines; drop {clash}"
            )
        if not _RESOURCE_ID.fullmatch(persistent_resource):
            raise ValidationError(
                f"--persistent_resource {persistent_resource!r}: expected the resource's ID "
                "(5-63 lowercase letters, digits and hyphens, starting with a letter)"
            )
    tpu = _tpu_type(accelerator)
    # Like the other catalogue checks, --force skips this one.
    if preemptible and not force and (tpu in _NO_PREEMPTIBLE_TPUS or machine_type == "cloud-tpu"):
        raise ValidationError(
            f"{preemptible} has no capacity for {tpu or machine_type} on Vertex; "
            "use a TPU VM type (e.g. 8xV5E) or drop the flag"
        )
    if flex_start and accelerator is None:
        raise ValidationError(
            "--flex_start queues for accelerators; a CPU-only job has nothing to wait for: "
            "add --gpu_spec/--tpu_spec or drop --flex_start"
        )
    name = None
    if reservation is not None:
        name = reservation_name(reservation, project=project)
        zone = reservation_zone(name)
        outside = [r for r in regions if zone and not zone.startswith(r + "-")]
        if zone and outside:
            raise ValidationError(
                f"--reservation is in zone {zone}, outside region {outside[0]}; "
                f"submit to --region {zone.rsplit('-', 1)[0]} only"
            )
    strategy = Strategy.SPOT if spot else Strategy.FLEX_START if flex_start else None
    return Scheduling(
        strategy=strategy,
        max_wait_s=wait_s,
        timeout_s=timeout_s,
        disable_retries=no_platform_retries,
        reservation=name,
        persistent_resource=persistent_resource,
    )


@dataclass(frozen=True)
class Rung:
    """One step of a capacity ladder: how a job asks for capacity on that step."""

    kind: str  # reservation | flex | spot | standard
    reservation: str | None = None
    max_wait_s: int | None = None

    def __str__(self) -> str:
        if self.kind == "reservation":
            return f"reservation:{self.reservation}"
        if self.kind == "flex" and self.max_wait_s is not None:
            return f"flex:{format_duration(self.max_wait_s)}"
        return self.kind

    def scheduling(self, base: Scheduling) -> Scheduling:
        """``base`` (timeout, retries) with this rung's strategy and reservation."""
        strategy = {"spot": Strategy.SPOT, "flex": Strategy.FLEX_START}.get(self.kind)
        return Scheduling(
            strategy=strategy,
            max_wait_s=self.max_wait_s if self.kind == "flex" else None,
            timeout_s=base.timeout_s,
            disable_retries=base.disable_retries,
            reservation=self.reservation if self.kind == "reservation" else None,
        )


def rung_regions(rung: Rung, regions: Sequence[str]) -> list[str]:
    """The regions a rung can place a job in: a reservation only its zone's."""
    zone = reservation_zone(rung.reservation) if rung.reservation else None
    return [r for r in regions if zone is None or zone.startswith(r + "-")]


def ladder_steps(
    rungs: Sequence[Rung], regions: Sequence[str], start: int = 0
) -> list[tuple[str, Rung]]:
    """Every (region, rung) a job may be placed on, best first: each rung over
    every region (starting at ``regions[start]``, so a sweep spreads over them)
    before the next, costlier rung."""
    n = len(regions)
    order = [regions[(start + i) % n] for i in range(n)] if n else []
    return [(region, rung) for rung in rungs for region in rung_regions(rung, order)]


def parse_ladder(text: str, *, project: str) -> tuple[Rung, ...]:
    """``--capacity reservation:NAME,flex:2h,spot,standard`` as rungs, in order."""
    rungs: list[Rung] = []
    for part in (p.strip() for p in text.split(",")):
        kind, _, arg = part.partition(":")
        if kind == "reservation" and arg:
            rungs.append(
                Rung(
                    "reservation",
                    reservation=reservation_name(arg, project=project, flag="--capacity"),
                )
            )
        elif kind == "flex":
            rungs.append(
                Rung("flex", max_wait_s=parse_duration(arg, "--capacity flex") if arg else None)
            )
        elif kind in ("spot", "standard") and not arg:
            rungs.append(Rung(kind))
        else:
            raise ValidationError(
                f"--capacity {part!r}: rungs are reservation:NAME, flex[:DURATION], spot, standard"
            )
    if len(set(map(str, rungs))) != len(rungs):
        raise ValidationError("--capacity names a rung twice; each rung is tried once per region")
    return tuple(rungs)
