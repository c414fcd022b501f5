"""The sweep lifecycle, written once for every platform.

``submit``: validate -> prepare -> (dry run: show, stop) -> preflight -> check
the push and the store -> build and publish the image -> record every job
PLANNED -> claim -> launch under the platform's limits -> record transitions.
``resubmit``, ``refresh`` and ``stop`` follow the recorded jobs back to their
platforms. A platform (:mod:`caliban.platforms.base`) never writes the store:
it reports through the :class:`Launch` handed to it, and the engine records.

Nothing is written before every input is checked; a job is recorded before
any side effect; a job whose launch may or may not have happened is looked up
before anything is sent again. Re-running a command resumes it.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio

from caliban.adapters import provenance
from caliban.adapters.build import BuiltImage
from caliban.adapters.store import PlanItem, Planned, RunOwner, Store
from caliban.core import experiment, names, secretenv
from caliban.errors import AuthError, BackendError, CalibanError, StoreError, ValidationError
from caliban.events import JobsPlanned, JobStateChanged, Notice, Sink
from caliban.limits import Pacing, RetryPolicy, with_retries
from caliban.options import ProjectOptions
from caliban.platforms.base import (
    Platform,
    Prepared,
    Published,
    Row,
    Submitter,
    SweepRequest,
    job_label,
)
from caliban.spec import JobRecord, JobState, Update
from caliban.spec import Platform as Kind
from caliban.sweep.fanout import submit_all
from caliban.sweep.heap import old_objects_frozen

# How long a run's claims outlive its last sign of life, when its pid cannot be
# checked (another host) or was reused; renewed four times per lease.
LEASE = 60.0
_LOOKUP_POLICY = RetryPolicy(attempts=4, initial=0.5, max_delay=8, deadline=60)

Confirm = Callable[[Sequence[JobRecord]], Awaitable[bool]]


class Host(Protocol):
    """What the engine needs from the session that drives it."""

    @property
    def sink(self) -> Sink: ...

    @property
    def user_name(self) -> str: ...

    @property
    def home(self) -> Path: ...

    @property
    def db_path(self) -> Path: ...

    @property
    def argv(self) -> Sequence[str] | None:
        """The command line that asked for this work (recorded as provenance), if any."""
        ...

    async def docker(self) -> Any: ...

    async def store(self) -> Store: ...

    async def check_store(self) -> None: ...

    async def find_image(self, ref: str) -> dict[str, Any] | None: ...

    async def prepare(
        self,
        project_opts: ProjectOptions,
        *,
        gpu_spec: object | None = None,
        tpu_spec: object | None = None,
    ) -> Prepared: ...

    async def check_push(self, prepared: Prepared, *, key_file: str | None = None) -> None: ...

    async def build_prepared(self, prepared: Prepared, *, no_cache: bool = False) -> BuiltImage: ...

    async def platform(self, kind: Kind) -> Platform: ...


@dataclass
class RunResult:
    """What a run or a submission did. ``ok``: every local job succeeded, or every
    remote job was accepted by its platform."""

    xgroup: str
    jobs: list[JobRecord] = field(default_factory=list)
    skipped: int = 0
    dry_run: bool = False
    platform: Kind = Kind.LOCAL
    # The jobs this call launched, when it left others alone (a local re-run:
    # ones that succeeded before, or that another run is running). None: all.
    launched: frozenset[str] | None = None

    @property
    def counts(self) -> Counter[JobState]:
        return Counter(j.state for j in self.jobs)

    def _ours(self, job: JobRecord) -> bool:
        return self.launched is None or job.job_id in self.launched

    @property
    def ok(self) -> bool:
        """Every job this call launched succeeded (local) or was accepted (remote).
        Jobs left to another run are that run's to report."""
        accepted = (JobState.SUBMITTED, JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
        return all(
            j.state is JobState.SUCCEEDED if j.platform is Kind.LOCAL else j.state in accepted
            for j in self.jobs
            if self._ours(j)
        )

    def tally(self) -> list[tuple[int, str]]:
        """Every job counted exactly once: by its state if this call launched
        it, else by why it was left alone."""
        counts: Counter[str] = Counter()
        for j in self.jobs:
            if self._ours(j):
                counts[j.state.value.lower()] += 1
            elif j.state is JobState.SUCCEEDED:
                counts["already succeeded"] += 1
            elif not j.state.terminal:
                counts["already running"] += 1
            else:  # left to another run, which recorded this meanwhile
                counts[f"{j.state.value.lower()} elsewhere"] += 1
        order = [s.value.lower() for s in JobState]
        return sorted(
            ((n, what) for what, n in counts.items()),
            key=lambda item: (order.index(item[1]) if item[1] in order else len(order), item[1]),
        )


def safe_path_part(name: str) -> str:
    """A group name as one path component under ``logs/``."""
    part = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]
    # "." and ".." would put the logs beside or above logs/ (groups recorded
    # before names were checked may still be called so).
    return "_" if part.strip(".") == "" else part


def log_path(home: Path, xgroup: str, job_id: str) -> str:
    return str(home / "logs" / safe_path_part(xgroup) / f"{job_id}.log")


# -- submit ------------------------------------------------------------------------------


async def submit(host: Host, kind: Kind, request: Any) -> RunResult:
    """Run one sweep request on the platform ``kind``; see the module docstring."""
    req: SweepRequest = request
    platform = await host.platform(kind)
    prepared = await host.prepare(
        request.project,
        gpu_spec=getattr(request, "gpu_spec", None),
        tpu_spec=getattr(request, "tpu_spec", None),
    )
    if req.xgroup is not None:
        names.check_xgroup(req.xgroup)
    config = experiment.validate(req.experiments if req.experiments is not None else {})
    total = experiment.check_size(config, req.max_sweep)
    xgroup = req.xgroup or names.default_xgroup_name(host.user_name, datetime.now())
    plan = await platform.check(request, prepared, xgroup)

    if req.dry_run or getattr(request, "export", None):
        await platform.preview(plan, config, total=total, xgroup=xgroup, prepared=prepared)
        return RunResult(xgroup, dry_run=True, platform=kind)

    await platform.preflight(plan, prepared)
    if plan.image is None and platform.remote:
        # A key in the build context: refused before the store is even created.
        await host.check_push(prepared, key_file=platform.push_key(plan))
    await host.check_store()  # an unwritable history fails before a long build
    # Read before the build reads the folder, so a later edit is not credited.
    git = await provenance.git_state(prepared.folder)
    built = None
    if plan.image is None:
        built = await host.build_prepared(prepared, no_cache=request.project.no_cache)
    published = await platform.publish(plan, prepared, built)
    origin = await _provenance(host, kind, request.project, prepared, published, built, git)

    store = await host.store()
    user = host.user_name
    provenance_id = await store.provenance(origin)
    xgroup_id = await store.xgroup(xgroup, user)
    spec_id = await store.container_spec(
        plan.spec_key(published),
        published.image,
        {**prepared.record(published.image, published.digest), **plan.record(published)},
        user,
    )
    rows = (
        Row(index, dict(exp), names.new_job_id(), tuple(experiment.to_argv(exp, req.script_args)))
        for index, exp in enumerate(experiment.expand(config))
    )

    def items() -> Iterator[PlanItem]:
        for job in plan.jobs(
            rows,
            total=total,
            xgroup=xgroup,
            store_id=store.store_id,
            images=published.images,
            commit=provenance.short_commit(origin),
        ):
            row = job.row
            yield PlanItem(
                index=row.index,
                args=row.argv,
                kwargs=row.kwargs,
                job_id=row.job_id,
                image=job.image,
                spec=job.spec,
                details=job.details,
                log_path=log_path(host.home, xgroup, row.job_id) if platform.keeps_logs else None,
                provenance_id=provenance_id,
            )

    # Every module the sweep needs is loaded by now: the collector's full scans skip
    # them while jobs are planned and launched (see caliban.sweep.heap).
    # The run is opened first so that the jobs it plans are its own from the start
    # (the claim then has nothing to write for them).
    run_id = await store.open_run(lease=LEASE)
    try:
        with old_objects_frozen():
            planned = await store.plan(
                xgroup_id=xgroup_id,
                container_spec_id=spec_id,
                platform=kind,
                user=user,
                items=items(),
                claim_for=run_id,
            )
            return await launch(
                host,
                platform,
                planned,
                platform.launch_settings(plan),
                xgroup=xgroup,
                total=total,
                run_id=run_id,
            )
    finally:
        with anyio.CancelScope(shield=True):
            await store.close_run(run_id)


async def _provenance(
    host: Host,
    kind: Kind,
    project: ProjectOptions,
    prepared: Prepared,
    published: Published,
    built: BuiltImage | None,
    git: dict[str, object] | None,
) -> dict[str, object]:
    """Where this submission's code came from, for every platform alike."""
    base = prepared.spec.base_image
    base_digest = None
    if built is not None and base:
        # The build just used it, so the engine has it; a registry digest if pulled.
        base_digest = await provenance.image_digest(host.find_image, base)
    return provenance.record(
        platform=kind.value,
        git=git,
        image=published.image,
        image_digest=provenance.registry_digest(published.image),
        image_id=built.image_id if built is not None else None,
        base_image=base if built is not None else None,
        base_image_digest=base_digest,
        # The command line is kept for `caliban show`: never with a secret in it.
        argv=secretenv.redact_argv(host.argv) if host.argv is not None else None,
        cwd=str(prepared.folder),
        entry=getattr(project, "entry", None),
    )


async def launch(
    host: Host,
    platform: Platform,
    planned: Sequence[Planned],
    settings: object,
    *,
    xgroup: str,
    total: int,
    run_id: str | None = None,
) -> RunResult:
    """Claim the ``new``/``reconcile`` jobs of ``planned`` and launch those this
    call holds; every other job is another run's (or done). ``run_id``: a run the
    caller opened (and closes), else this call opens and closes its own."""
    store = await host.store()
    wanted = [p.job.job_id for p in planned if p.action in ("new", "reconcile")]
    own_run = run_id is None
    if run_id is None:
        run_id = await store.open_run(lease=LEASE)
    try:
        # Another run of this group may hold some of them: we launch only what we
        # claim, and leave the rest to it.
        claim = await store.claim(run_id, wanted, lease=LEASE)
        mine = len(claim.claimed)
        skipped = len(planned) - mine
        host.sink(JobsPlanned(xgroup, total, mine, skipped, remote=platform.remote))
        if platform.remote:
            # Finished and running remote jobs are the platform's to report: only
            # jobs another run is submitting right now are worth a line.
            notices = skip_notices(
                xgroup, planned=len(planned), mine=mine, held=claim.held, done=0, orphans=0
            )
        else:
            active = [p.job.job_id for p in planned if p.action == "active"]
            held = {**claim.held, **await store.owners(active)}
            notices = skip_notices(
                xgroup,
                planned=len(planned),
                mine=mine,
                held=held,
                done=sum(1 for p in planned if p.action == "done"),
                orphans=sum(1 for j in active if j not in held),
            )
        for line in notices:
            host.sink(Notice(line))
        todo = [p for p in planned if p.job.job_id in claim.claimed]
        if todo:
            run = StoreLaunch(store, host.sink, total, run_id)
            failed: Exception | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(_renew, store, run_id, host.sink)
                try:
                    await platform.launch(todo, settings, run)
                except Exception as exc:  # raised as itself, not in a group with the renewer
                    failed = exc
                finally:
                    tg.cancel_scope.cancel()
            if failed is not None:
                raise failed
    finally:
        if own_run:
            with anyio.CancelScope(shield=True):
                await store.close_run(run_id)
    # What planning made, with what the launch (or another run) recorded since.
    jobs = await store.current([p.job for p in planned])
    return RunResult(
        xgroup,
        jobs,
        skipped,
        platform=platform.kind,
        launched=None if platform.remote else claim.claimed,
    )


async def _renew(store: Store, run_id: str, sink: Sink) -> None:
    """Keep this run's claims alive while it launches (a long local sweep)."""
    while True:
        await anyio.sleep(LEASE / 4)
        try:
            await store.renew_run(run_id, lease=LEASE)
        except StoreError as exc:
            sink(Notice(f"could not renew this run's claims: {exc.message}", "warning"))


class StoreLaunch:
    """The engine's side of a launch: records for the platform, and fans out."""

    def __init__(self, store: Store, sink: Sink, total: int, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self.sink = sink
        self.total = total

    async def record(self, updates: Sequence[Update], *, force: bool = False) -> int:
        if not updates:
            return 0
        return await self._store.record(updates, force=force)

    async def current(self, job: JobRecord) -> JobRecord | None:
        found = await self._store.job(job.job_id)
        # `caliban stop` from another terminal may have stopped it while queued.
        if found is None or found.state.terminal:
            return None
        # Our lease lapsed (a suspended laptop) and another run took the job over.
        if not await self._store.holds(self._run_id, job.job_id):
            return None
        return found

    async def unfinished(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        current = await self._store.jobs(job_ids=[j.job_id for j in jobs])
        left = [j for j in current if not j.state.terminal]
        if left:
            held = await self._store.owners([j.job_id for j in left])
            left = [
                j for j in left if j.job_id not in held or held[j.job_id].run_id == self._run_id
            ]
        return left

    async def fan_out(
        self, planned: Sequence[Planned], submitter: Submitter, *, pacing: Pacing
    ) -> None:
        planned = await self._adopt(planned, submitter)
        await submit_all(
            planned, submitter, store=self._store, sink=self.sink, pacing=pacing, total=self.total
        )

    async def _adopt(self, planned: Sequence[Planned], submitter: Submitter) -> list[Planned]:
        """Settle jobs an earlier run left PLANNED with one lookup for all of them:
        those that exist are adopted, the others are sent as new. If the lookup
        fails, the fan-out looks each one up before sending it instead."""
        unsure = [p.job for p in planned if p.action == "reconcile"]
        if not unsure:
            return list(planned)
        try:
            found = await with_retries(partial(submitter.find_many, unsure), _LOOKUP_POLICY)
        except AuthError:
            raise
        except BackendError:
            return list(planned)
        out: list[Planned] = []
        for p in planned:
            accepted = found.get(p.job.job_id)
            if p.action != "reconcile":
                out.append(p)
            elif accepted is None:
                out.append(Planned("new", p.job))
            else:
                await self.record([accepted])
                self.sink(
                    JobStateChanged(
                        p.job.job_id,
                        job_label(p.job, self.total),
                        accepted.state,
                        detail=accepted.url or accepted.platform_id,
                        argv=p.job.args,
                    )
                )
                out.append(Planned("active", p.job))
        return out


def skip_notices(
    xgroup: str,
    *,
    planned: int,
    mine: int,
    held: Mapping[str, RunOwner],
    done: int,
    orphans: int,
    here: str | None = None,
) -> list[str]:
    """One line per reason a planned job is not launched by this call."""
    here = socket.gethostname() if here is None else here
    lines: list[str] = []
    if held:
        owners = sorted(set(held.values()), key=lambda o: o.started)
        who = " and ".join(
            f"pid {o.pid}"
            + (f" on {o.host}" if o.host != here else "")
            + f" since {datetime.fromisoformat(o.started).astimezone():%H:%M}"
            for o in owners
        )
        if not mine:
            rest = "nothing is left to run here"
        elif mine + len(held) == planned:
            rest = f"running the {mine} others"
        else:
            rest = f"running {mine} others"
        lines.append(
            f"{len(held)} of {planned} jobs of xgroup {xgroup} are being run by {who}; {rest}"
        )
    if done:
        lines.append(f"{done} job(s) of {xgroup} already succeeded; not running them again")
    if orphans:
        lines.append(
            f"{orphans} job(s) of {xgroup} are still running from an earlier run; "
            "`caliban status` records how they end"
        )
    return lines


# -- after launch ------------------------------------------------------------------------


def _by_kind(jobs: Sequence[JobRecord]) -> dict[Kind, list[JobRecord]]:
    groups: dict[Kind, list[JobRecord]] = {}
    for job in jobs:
        groups.setdefault(job.platform, []).append(job)
    return groups


async def refresh(host: Host, jobs: Sequence[JobRecord]) -> list[JobRecord]:
    """Ask each platform about the unfinished ``jobs`` (one call per target) and
    record what it says. Jobs a live run holds are that run's to record."""
    store = await host.store()
    open_jobs = [j for j in jobs if not j.state.terminal]
    if not open_jobs:
        return list(jobs)
    held = await store.owners([j.job_id for j in open_jobs])
    updates: list[Update] = []
    for kind, group in _by_kind([j for j in open_jobs if j.job_id not in held]).items():
        try:
            platform = await host.platform(kind)
            updates += await platform.refresh(group)
        except CalibanError as exc:
            host.sink(
                Notice(f"could not refresh {kind.value} jobs: {exc.message}", level="warning")
            )
    if updates:
        await store.record(updates)
    fresh = {j.job_id: j for j in await store.jobs(job_ids=[j.job_id for j in jobs])}
    return [fresh.get(j.job_id, j) for j in jobs]


async def stop(
    host: Host,
    *,
    xgroup: str | None = None,
    dry_run: bool = False,
    confirm: Confirm | None = None,
) -> list[JobRecord]:
    """Stop every unfinished job of this user (of one group, with ``xgroup``)."""
    store = await host.store()
    if xgroup is not None and not await store.has_xgroup(xgroup):
        raise ValidationError(f"no experiment group named {xgroup!r} in {host.db_path}")
    candidates = await store.jobs(
        xgroup=xgroup,
        states=(
            JobState.PLANNED,
            JobState.SUBMITTED,
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.UNKNOWN,
        ),
    )
    jobs = [j for j in candidates if j.user == host.user_name]
    if dry_run or not jobs:
        await remove_leftovers(host, xgroup, dry_run=dry_run)
        return jobs
    if confirm is not None and not await confirm(jobs):
        return []
    for kind, group in _by_kind(jobs).items():
        platform = await host.platform(kind)
        if not platform.remote:
            # A job no live run holds may have ended unseen (its run was killed):
            # how it ended is recorded, not overwritten with STOPPED. Jobs a live
            # run holds are skipped by refresh and stopped below.
            group = [j for j in await refresh(host, group) if not j.state.terminal]
            if not group:
                continue
            # Recorded first: a launch still waiting on these jobs must see
            # STOPPED, not turn the kill into FAILED.
            await store.record(
                [
                    Update(j.job_id, JobState.STOPPED, message="stopped by caliban stop")
                    for j in group
                ]
            )
            await platform.cancel(group)
        else:
            await store.record(await platform.cancel(group))
    await remove_leftovers(host, xgroup, dry_run=False)
    return await store.jobs(job_ids=[j.job_id for j in jobs])


async def latest_xgroup(host: Host) -> str:
    """The group of the most recently planned job."""
    newest = await (await host.store()).jobs(limit=1)
    if not newest:
        raise ValidationError(f"no jobs recorded in {host.db_path} yet (see `caliban run`)")
    return newest[0].xgroup


async def remove_leftovers(host: Host, xgroup: str | None, *, dry_run: bool) -> None:
    """What finished jobs of this store still hold on a platform (containers an
    interrupted run could not remove) is removed, the user's own only."""
    store = await host.store()
    for kind in Kind:
        if not await store.jobs(xgroup=xgroup, platform=kind, limit=1):
            continue  # nothing of this platform to ask about
        try:
            platform = await host.platform(kind)
            held = await platform.leftovers()
        except CalibanError:
            continue  # the platform is not reachable here: nothing to clean
        if not held:
            continue
        records = await store.jobs(job_ids=list(held))
        left = [
            j
            for j in records
            if j.state.terminal
            and j.user == host.user_name
            and (xgroup is None or j.xgroup == xgroup)
        ]
        if not left:
            continue
        if dry_run:
            host.sink(
                Notice(f"{len(left)} leftover container(s) of finished jobs would be removed")
            )
            continue
        await platform.remove([held[j.job_id] for j in left])
        host.sink(Notice(f"removed {len(left)} leftover container(s) of finished jobs"))


async def resubmit(
    host: Host,
    *,
    xgroup: str,
    all_jobs: bool = False,
    dry_run: bool = False,
    confirm: Confirm | None = None,
    max_parallel: int | None = None,
) -> RunResult:
    """Launch again the latest job of each experiment of ``xgroup`` that failed or
    was stopped (every finished one with ``all_jobs``), with the spec recorded for
    it; a remote job whose submission was cut short is looked up and sent only
    if missing."""
    store = await host.store()
    if not await store.has_xgroup(xgroup):
        raise ValidationError(f"no experiment group named {xgroup!r} in {host.db_path}")
    latest = await refresh(host, await store.latest_per_experiment(xgroup))
    platforms = {kind: await host.platform(kind) for kind in {j.platform for j in latest}}

    def wanted(job: JobRecord) -> bool:
        if job.state in (JobState.FAILED, JobState.STOPPED):
            return True
        if all_jobs and job.state.terminal:
            return True
        return platforms[job.platform].remote and job.state is JobState.PLANNED

    chosen = [j for j in latest if wanted(j)]
    if dry_run or not chosen:
        return RunResult(xgroup, chosen, dry_run=dry_run)
    if confirm is not None and not await confirm(chosen):
        return RunResult(xgroup)
    groups = _by_kind(chosen)
    # Every platform checks its jobs can go again before anything is recorded.
    settings = {
        kind: await platforms[kind].resume(group, max_parallel=max_parallel)
        for kind, group in groups.items()
    }
    with old_objects_frozen():
        jobs = await _launch_again(host, xgroup, groups, platforms, settings)
    return RunResult(xgroup, jobs)


async def _launch_again(
    host: Host,
    xgroup: str,
    groups: Mapping[Kind, list[JobRecord]],
    platforms: Mapping[Kind, Platform],
    settings: Mapping[Kind, object],
) -> list[JobRecord]:
    """:func:`resubmit`'s new jobs, recorded and launched platform by platform."""
    store = await host.store()
    jobs: list[JobRecord] = []
    # Remote submissions first: they return at once, a local sweep runs to its end.
    for kind in sorted(groups, key=lambda k: not platforms[k].remote):
        platform, group = platforms[kind], groups[kind]
        items = []
        for old in (j for j in group if j.state.terminal):
            new_id = names.new_job_id()
            rebound = platform.rebind(old, new_id)
            path = log_path(host.home, xgroup, new_id) if platform.keeps_logs else None
            items.append(
                (
                    old,
                    PlanItem.again(
                        old,
                        job_id=new_id,
                        spec=rebound.spec,
                        details=rebound.details,
                        log_path=path,
                    ),
                )
            )
        again = await store.add_jobs(items, user=host.user_name)
        planned = [Planned("new", j) for j in again]
        planned += [Planned("reconcile", j) for j in group if not j.state.terminal]
        result = await launch(
            host, platform, planned, settings[kind], xgroup=xgroup, total=len(planned)
        )
        jobs += result.jobs
    return jobs


__all__ = [
    "LEASE",
    "Host",
    "RunResult",
    "launch",
    "refresh",
    "remove_leftovers",
    "resubmit",
    "skip_notices",
    "stop",
    "submit",
]
