"""When a Vertex job of a capacity ladder moves, and to where. Pure.

A job records its ladder in its details when it is planned: ``ladder`` (the
(region, rung, image) steps it may use, best first), ``step`` (where it is),
``attempt`` and ``queue_timeout_s``. :func:`reason` says whether the job must
leave its step; :func:`moved` gives the body and details of the next attempt.
A job that failed because of its own code is never moved (docs/capacity.md).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from caliban.platforms.vertex import scheduling as sched
from caliban.spec import JobRecord, JobState

# google.rpc.Code RESOURCE_EXHAUSTED: what CustomJob.error carries when Vertex
# could not get machines (Compute Engine's stockout) or a quota ran out.
RESOURCE_EXHAUSTED = 8
_STOCKOUT = re.compile(
    r"does not have enough resources|ZONE_RESOURCE_POOL_EXHAUSTED|stockout"
    r"|resources? (?:are|is) (?:currently )?(?:unavailable|insufficient)",
    re.IGNORECASE,
)
# The user's code ran out of memory: RESOURCE_EXHAUSTED in words, not capacity.
_OOM = re.compile(r"out of memory", re.IGNORECASE)
_PREEMPTED = re.compile(r"preempt(?:ed|ion)|spot vm .*reclaimed", re.IGNORECASE)
_WAITING = {"JOB_STATE_QUEUED", "JOB_STATE_PENDING", ""}

WAITED = "waited"
EXPIRED = "expired"
STOCKOUT = "no_capacity"
PREEMPTED = "preempted"


def _age_s(job: JobRecord, now: datetime) -> float:
    try:
        created = datetime.fromisoformat(job.created.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (now - created).total_seconds()


def reason(job: JobRecord, *, now: datetime, max_recoveries: int = 0) -> str | None:
    """Why ``job`` must leave its place (:data:`WAITED`, :data:`EXPIRED`,
    :data:`STOCKOUT`, :data:`PREEMPTED`), or None to leave it be."""
    d = job.details
    ladder = d.get("ladder")
    vstate = str(d.get("vertex_state") or "")
    message = job.message or ""
    if job.state is JobState.SUBMITTED and isinstance(ladder, list):
        timeout = float(str(d.get("queue_timeout_s") or 0))
        if vstate in _WAITING and timeout and _age_s(job, now) > timeout:
            return WAITED if _has_next(job) else None
        return None
    if job.state is not JobState.FAILED:
        return None
    if isinstance(ladder, list):
        if vstate == "JOB_STATE_EXPIRED":
            return EXPIRED if _has_next(job) else None
        code = d.get("error_code")
        capacity = code == RESOURCE_EXHAUSTED and not _OOM.search(message)
        if (capacity or _STOCKOUT.search(message)) and _has_next(job):
            return STOCKOUT
    recoveries = int(str(d.get("recoveries") or 0))
    if _PREEMPTED.search(message) and recoveries < max_recoveries:
        return PREEMPTED
    return None


def _has_next(job: JobRecord) -> bool:
    ladder = job.details.get("ladder")
    step = int(str(job.details.get("step") or 0))
    return isinstance(ladder, list) and step + 1 < len(ladder)


def _rung(text: str, project: str) -> sched.Rung:
    return sched.parse_ladder(text, project=project)[0]


def moved(
    job: JobRecord, why: str, *, job_id: str, base: sched.Scheduling
) -> tuple[dict[str, Any], dict[str, object]]:
    """The CustomJob body and details of ``job``'s next attempt, as ``job_id``."""
    d = dict(job.details)
    ladder = d.get("ladder")
    step = int(str(d.get("step") or 0))
    if why != PREEMPTED and isinstance(ladder, list):
        step += 1
    body = copy.deepcopy(dict(job.spec))
    details: dict[str, object] = {
        k: v
        for k, v in d.items()
        if k not in ("console_url", "vertex_state", "error_code", "moving_from")
    }
    if isinstance(ladder, list):
        place: Mapping[str, Any] = ladder[step]
        rung = _rung(str(place["rung"]), str(d.get("project") or ""))
        body = with_placement(body, rung.scheduling(base), image=str(place["image"]))
        details.update(region=str(place["region"]), rung=str(place["rung"]), step=step)
    if why == PREEMPTED:
        details["recoveries"] = int(str(d.get("recoveries") or 0)) + 1
    details["attempt"] = int(str(d.get("attempt") or 1)) + 1
    details["moved_from"] = job.job_id
    details["move_reason"] = why
    return body, details


def with_placement(
    body: dict[str, Any], placement: sched.Scheduling, *, image: str
) -> dict[str, Any]:
    """``body`` asking for capacity as ``placement`` says, running ``image``."""
    spec = body.setdefault("jobSpec", {})
    fields = placement.scheduling()
    if fields:
        spec["scheduling"] = fields
    else:
        spec.pop("scheduling", None)
    for pool in spec.get("workerPoolSpecs", []):
        machine = pool.setdefault("machineSpec", {})
        affinity = placement.reservation_affinity()
        if affinity:
            machine["reservationAffinity"] = affinity
        else:
            machine.pop("reservationAffinity", None)
        pool.setdefault("containerSpec", {})["imageUri"] = image
    return body


def base_of(body: Mapping[str, Any]) -> sched.Scheduling:
    """What every rung of a job keeps: its timeout and retry choice."""
    fields = body.get("jobSpec", {}).get("scheduling", {})
    timeout = str(fields.get("timeout") or "")
    return sched.Scheduling(
        timeout_s=int(timeout[:-1]) if timeout.endswith("s") and timeout[:-1].isdigit() else None,
        disable_retries=bool(fields.get("disableRetries")),
    )


__all__ = ["base_of", "moved", "reason", "with_placement"]
