"""``caliban watch``: follow a sweep on any platform until every job has ended.

Each round refreshes the latest job of every experiment through the engine's
:func:`~caliban.sweep.engine.refresh`, reports what changed, and asks platforms
that can move jobs (:class:`~caliban.platforms.base.Relocates`, Vertex's
capacity ladder) whether one must go elsewhere. A move is recorded before
anything happens on the platform, as a new PLANNED attempt of the experiment
whose details name the attempt it replaces (``moved_from``). Then the old
attempt is cancelled, and the new one is launched through the engine's
:func:`~caliban.sweep.engine.launch` (the same fan-out, with its lookup by
label) only once the platform reports the old one ended. So a watch killed at
any point and started again finds the PLANNED attempt and carries on from
there: never two live platform jobs for one experiment, none lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, cast

import anyio

from caliban.adapters.store import PlanItem, Planned
from caliban.core import names
from caliban.errors import ValidationError
from caliban.events import Event, JobsPlanned, JobStateChanged, Notice
from caliban.platforms.base import Relocates, job_label
from caliban.spec import JobRecord, JobState, Update
from caliban.sweep.engine import Host, RunResult, latest_xgroup, launch, refresh

DEFAULT_INTERVAL = 10.0
# Details that say which attempt a job is, not where it ran.
_OWN_DETAILS = frozenset({"moved_from", "attempt", "move_reason"})


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Quiet:
    """The host as a move's launch sees it: its own JobsPlanned line would reset
    the watch's display, so it is left out."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def sink(self, event: Event) -> None:
        if not isinstance(event, JobsPlanned):
            self._host.sink(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


async def watch(
    host: Host,
    *,
    xgroup: str | None = None,
    interval: float = DEFAULT_INTERVAL,
    max_recoveries: int = 0,
    clock: Callable[[], datetime] = _utcnow,
) -> RunResult:
    """Follow ``xgroup`` (default: the group of the latest job) until every
    experiment's latest job has ended; move jobs as their platform asks."""
    store = await host.store()
    if xgroup is None:
        xgroup = await latest_xgroup(host)
    elif not await store.has_xgroup(xgroup):
        raise ValidationError(f"no experiment group named {xgroup!r} in {host.db_path}")
    jobs = await store.latest_per_experiment(xgroup)
    total = len(jobs)
    # The display follows experiments: a moved job keeps its line and its count.
    key = {j.index: j.job_id for j in jobs}
    seen: dict[int, JobState] = {}
    host.sink(JobsPlanned(xgroup, total, total, 0, remote=False))
    while True:
        jobs = await refresh(host, await store.latest_per_experiment(xgroup))
        for job in jobs:
            if seen.get(job.index) is not job.state:
                seen[job.index] = job.state
                host.sink(
                    JobStateChanged(
                        key.setdefault(job.index, job.job_id),
                        job_label(job, total),
                        job.state,
                        exit_code=job.exit_code,
                        detail=job.message,
                        argv=job.args,
                    )
                )
        busy = False
        for job in jobs:
            busy = await _step(host, job, total, max_recoveries, clock()) or busy
        if not busy and all(j.state.terminal for j in jobs):
            return RunResult(xgroup, list(jobs))
        await anyio.sleep(interval)


async def _step(host: Host, job: JobRecord, total: int, max_recoveries: int, now: datetime) -> bool:
    """Carry on with a move of ``job``, or start one; whether one is under way."""
    if job.state is JobState.PLANNED and job.details.get("moved_from"):
        await _settle(host, job, total)
        return True
    if job.user != host.user_name:
        return False
    platform = await host.platform(job.platform)
    if not isinstance(platform, Relocates):
        return False
    new_id = names.new_job_id()
    rebound = platform.relocate(job, job_id=new_id, now=now, max_recoveries=max_recoveries)
    if rebound is None:
        return False
    store = await host.store()
    # The intent, recorded before the platform hears of it.
    (new,) = await store.add_jobs(
        [(job, PlanItem.again(job, job_id=new_id, spec=rebound.spec, details=rebound.details))],
        user=host.user_name,
    )
    d = rebound.details
    where = " ".join(str(d[k]) for k in ("region", "rung") if d.get(k))
    host.sink(
        Notice(
            f"[{job_label(job, total)}] moving to {where or 'a new attempt'} "
            f"(attempt {d.get('attempt')}: {d.get('move_reason')})",
            level="status",
        )
    )
    await _settle(host, new, total)
    return True


async def _settle(host: Host, new: JobRecord, total: int) -> None:
    """Cancel the attempt ``new`` replaces; launch ``new`` once that one ended."""
    store = await host.store()
    old = await store.job(str(new.details["moved_from"]))
    platform = await host.platform(new.platform)
    if old is not None and not old.state.terminal:
        if old.state is not JobState.CANCELLING:
            await store.record(await platform.cancel([old]))
        (old,) = await refresh(host, [old])
        if not old.state.terminal:
            return  # Vertex confirms cancellations later: the next round looks again
    if old is not None and old.state is JobState.SUCCEEDED:
        # It finished before the cancel took effect: nothing is left to move. The new
        # attempt, the experiment's latest, stands for the old one from now on: it
        # records where that one ran, so `logs` and `results` read the output that
        # answers the experiment rather than finding none.
        where = {k: v for k, v in old.details.items() if k not in _OWN_DETAILS}
        await store.record(
            [
                Update(
                    new.job_id,
                    JobState.SUCCEEDED,
                    exit_code=old.exit_code,
                    message=f"not moved: attempt {old.job_id} succeeded",
                    platform_id=old.platform_id,
                    details={**where, "ran_as": old.job_id},
                )
            ]
        )
        return
    settings = await platform.resume([new], max_parallel=None)
    await launch(
        cast("Host", _Quiet(host)),
        platform,
        [Planned("reconcile", new)],
        settings,
        xgroup=new.xgroup,
        total=total,
    )


def moves(jobs: Sequence[JobRecord]) -> list[JobRecord]:
    """The attempts among ``jobs`` that replaced another (for status displays)."""
    return [j for j in jobs if j.details.get("moved_from")]


__all__ = ["DEFAULT_INTERVAL", "moves", "watch"]
