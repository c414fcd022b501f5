"""A platform that keeps its jobs in memory, for the conformance suite.

:class:`Cloud` plays the remote service: it holds jobs by caliban job id, counts
every call made to it, and has knobs for the failures a real platform shows (a
create whose answer is lost after the job was made, a create refused with a
retryable error, a job that fails). :class:`MemoryPlatform` is the
:class:`~caliban.platforms.base.Platform` in front of it, written the way a real
remote platform is: it launches through the engine's shared fan-out with a
:class:`~caliban.platforms.base.Submitter`, refreshes with one list call per
target, and never touches the store.

The engine builds a platform from its class alone (``cls(ctx)``), so the cloud a
platform talks to is bound into a subclass by :func:`bound`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from caliban.adapters.build import BuiltImage
from caliban.adapters.store import Planned
from caliban.core.experiment import Config
from caliban.errors import BackendError, OutcomeUnknown, ValidationError
from caliban.events import Notice
from caliban.limits import Pacing, RetryPolicy
from caliban.options import ProjectOptions
from caliban.platforms.base import (
    Context,
    JobSpec,
    Launch,
    Prepared,
    Published,
    Rebound,
    Row,
)
from caliban.spec import JobRecord, JobState, Update
from caliban.spec import Platform as Kind

IMAGE = "memory.invalid/conformance:1"
_FAST = Pacing(
    rate_per_minute=60_000,
    max_inflight=4,
    policy=RetryPolicy(attempts=4, initial=0.01, max_delay=0.05, deadline=30),
)


@dataclass
class Remote:
    """One job as the memory cloud holds it; ``name`` is the cloud's own id."""

    name: str
    job_id: str
    target: str
    argv: tuple[str, ...]
    state: JobState = JobState.RUNNING


@dataclass
class Cloud:
    """The remote service: its jobs, the calls it answered, and failure knobs.

    Like a real service it makes a new job for every create it accepts, so a
    create sent twice shows up as two jobs with the same caliban job id."""

    jobs: list[Remote] = field(default_factory=list)
    #: Creates that reached the service, per caliban job id.
    creates: Counter[str] = field(default_factory=Counter)
    #: List calls (refresh, lookup of many), per target.
    lists: Counter[str] = field(default_factory=Counter)
    #: Job indexes whose next create makes the job but loses the answer.
    lose_answer: set[int] = field(default_factory=set)
    #: Job indexes whose next create is refused with a retryable error.
    refuse_once: set[int] = field(default_factory=set)
    #: Creates carried out whose answer was lost.
    lost: int = 0

    def create(self, job: JobRecord, target: str) -> Update:
        self.creates[job.job_id] += 1
        if job.index in self.refuse_once:
            self.refuse_once.discard(job.index)
            raise BackendError("memory: try again", retryable=True, status=503)
        remote = Remote(f"memory-{len(self.jobs)}", job.job_id, target, job.args)
        self.jobs.append(remote)
        if job.index in self.lose_answer:
            self.lose_answer.discard(job.index)
            self.lost += 1
            raise OutcomeUnknown("memory: the answer was lost")
        return self._update(remote)

    def list(self, target: str) -> dict[str, Update]:
        self.lists[target] += 1
        return {j.job_id: self._update(j) for j in self.jobs if j.target == target}

    def named(self, job_id: str) -> Remote | None:
        return next((j for j in reversed(self.jobs) if j.job_id == job_id), None)

    def finish(self, job_id: str, state: JobState) -> None:
        """What the job itself does: end, with ``state``."""
        remote = self.named(job_id)
        assert remote is not None and not remote.state.terminal, remote
        remote.state = state

    def cancel(self, job_id: str) -> Update | None:
        remote = self.named(job_id)
        if remote is None:
            return None
        if not remote.state.terminal:
            remote.state = JobState.STOPPED
        return self._update(remote)

    @staticmethod
    def _update(remote: Remote) -> Update:
        code = {JobState.SUCCEEDED: 0, JobState.FAILED: 1}.get(remote.state)
        return Update(remote.job_id, remote.state, exit_code=code, platform_id=remote.name)


@dataclass(frozen=True)
class MemoryRequest:
    """A sweep for the memory platform: jobs spread round-robin over ``targets``."""

    project: ProjectOptions
    experiments: object | None = None
    script_args: tuple[str, ...] = ()
    xgroup: str | None = None
    dry_run: bool = False
    max_sweep: int = 1000
    targets: tuple[str, ...] = ("east", "west")


@dataclass(frozen=True)
class MemoryPlan:
    request: MemoryRequest

    @property
    def image(self) -> str | None:
        return IMAGE  # nothing is built: the engine goes straight to publish

    def jobs(
        self,
        rows: Iterable[Row],
        *,
        total: int,
        xgroup: str,
        store_id: str,
        images: Mapping[str, str],
        commit: str | None = None,
    ) -> Iterator[JobSpec]:
        targets = self.request.targets
        for row in rows:
            target = targets[row.index % len(targets)]
            spec: dict[str, object] = {"job_id": row.job_id, "argv": list(row.argv)}
            yield JobSpec(row, spec, {"target": target}, images.get(target, IMAGE))

    def spec_key(self, published: Published) -> str:
        return f"memory:{published.image}:{','.join(self.request.targets)}"

    def record(self, published: Published) -> dict[str, object]:
        return {"platform": "memory"}


def _target(job: JobRecord) -> str:
    return str(job.details["target"])


class _Submitter:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def quota_key(self, job: JobRecord) -> str:
        return _target(job)

    async def create(self, job: JobRecord) -> Update:
        return self.cloud.create(job, _target(job))

    async def find(self, job: JobRecord) -> Update | None:
        return self.cloud.list(_target(job)).get(job.job_id)

    async def find_many(self, jobs: Sequence[JobRecord]) -> dict[str, Update]:
        return await _find_many(self.cloud, jobs)


async def _find_many(cloud: Cloud, jobs: Sequence[JobRecord]) -> dict[str, Update]:
    wanted = {j.job_id for j in jobs}
    found: dict[str, Update] = {}
    for target in sorted({_target(j) for j in jobs}):
        found.update((k, u) for k, u in cloud.list(target).items() if k in wanted)
    return found


class MemoryPlatform:
    """The memory cloud behind the Platform Protocol; see :func:`bound`."""

    cloud: ClassVar[Cloud]
    kind: Kind = Kind.VERTEX
    remote = True
    keeps_logs = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def check(self, request: MemoryRequest, prepared: Prepared, xgroup: str) -> MemoryPlan:
        if not request.targets:
            raise ValidationError("the memory platform needs at least one target")
        return MemoryPlan(request)

    async def preview(
        self, plan: MemoryPlan, config: Config, *, total: int, xgroup: str, prepared: Prepared
    ) -> None:
        self.ctx.sink(Notice(f"would launch {total} job(s) on the memory platform"))

    async def preflight(self, plan: MemoryPlan, prepared: Prepared) -> None:
        return None

    def push_key(self, plan: MemoryPlan) -> str | None:
        return None

    async def publish(
        self, plan: MemoryPlan, prepared: Prepared, built: BuiltImage | None
    ) -> Published:
        return Published(IMAGE, "sha256:" + "0" * 64)

    def launch_settings(self, plan: MemoryPlan) -> object:
        return _FAST

    async def resume(self, jobs: Sequence[JobRecord], *, max_parallel: int | None) -> object:
        return _FAST

    async def launch(self, planned: Sequence[Planned], settings: object, run: Launch) -> None:
        assert isinstance(settings, Pacing)
        await run.fan_out(planned, _Submitter(self.cloud), pacing=settings)

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        found = await _find_many(self.cloud, jobs)
        return [found[j.job_id] for j in jobs if j.job_id in found]

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        answers = (self.cloud.cancel(j.job_id) for j in jobs)
        return [u for u in answers if u is not None]

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        remote = self.cloud.named(job.job_id)
        if remote is not None:
            yield " ".join(remote.argv) + "\n"

    def rebind(self, job: JobRecord, job_id: str) -> Rebound:
        return Rebound({**job.spec, "job_id": job_id}, dict(job.details))

    async def leftovers(self) -> Mapping[str, object]:
        return {}

    async def remove(self, handles: Sequence[object]) -> None:
        return None


def bound(cloud: Cloud, kind: Kind) -> type[MemoryPlatform]:
    """A :class:`MemoryPlatform` class that talks to ``cloud`` and answers as ``kind``."""
    attributes: dict[str, Any] = {"cloud": cloud, "kind": kind}
    return type("BoundMemoryPlatform", (MemoryPlatform,), attributes)
