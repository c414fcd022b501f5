"""One worker of a pre-warmed sweep: a slot that owns its GPUs and cores for the
whole sweep and keeps its next job's container started behind a gate.

Exclusivity holds by construction: the slots partition the pool (each holds
its set from its first job to its last), and a slot opens its next gate only
once its current job is over, which the gate helper reports after the job and
every process it left in the container are gone, or, should the helper not get
to say so, once the container has exited.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from caliban.adapters.docker import errors
from caliban.adapters.store import Planned
from caliban.core.topology import Choice, format_cpu_list
from caliban.errors import BackendError
from caliban.events import JobStateChanged
from caliban.platforms.base import Launch, job_label
from caliban.platforms.local import gate as gating
from caliban.platforms.local import joboutput
from caliban.platforms.local.containers import (
    LocalBackend,
    container_name,
    exit_update,
    with_cpus,
    with_gpus,
)
from caliban.platforms.local.gpus import GpuInventory
from caliban.spec import JobRecord, JobState, Update

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from caliban.platforms.local.engineapi import Container

Plain = Callable[[Planned, Choice], Awaitable[None]]


@dataclass
class _Warm:
    planned: Planned
    label: str
    gate: gating.Gate
    container: Container | None = None
    # The helper holds its gate open: a release can no longer be lost.
    armed: anyio.Event = field(default_factory=anyio.Event)
    released: anyio.Event = field(default_factory=anyio.Event)
    # The job is over (helper's word or the container's exit): the slot may go on.
    over: anyio.Event = field(default_factory=anyio.Event)
    # No longer this run's job (stopped meanwhile, claim lost): nothing to record.
    dropped: bool = False
    # The job's exit status as the helper reported it, once the job is over.
    status: int | None = None


class FirstWave:
    """Every slot's first container starts before any slot pre-warms its next one:
    starts in parallel share the engine (and, on a small machine, its cores), and
    a second container has a whole job's time to get ready, the first ones none."""

    def __init__(self, slots: int) -> None:
        self._waiting = slots
        self.started = anyio.Event()
        if slots <= 0:
            self.started.set()

    def arrive(self) -> None:
        self._waiting -= 1
        if self._waiting <= 0:
            self.started.set()


class ImageConfigs:
    """Each image's own Config (its ENTRYPOINT and CMD), inspected once per sweep
    for all the slots."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend
        self._known: dict[str, dict[str, Any]] = {}
        self._lock = anyio.Lock()

    async def get(self, name: str) -> dict[str, Any]:
        async with self._lock:
            if name not in self._known:
                self._known[name] = await self._backend.image_config(name)
            return self._known[name]


async def _either(first: anyio.Event, second: anyio.Event) -> None:
    """Until one of the two events is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wait, first)
        tg.start_soon(wait, second)


class Slot:
    def __init__(
        self,
        *,
        backend: LocalBackend,
        run: Launch,
        gates: gating.Gates,
        inventory: GpuInventory | None,
        simulated_cpus: bool,
        plain: Callable[..., Awaitable[None]],
        wave: FirstWave | None = None,
        images: ImageConfigs | None = None,
    ) -> None:
        self.backend = backend
        self.run = run
        self.gates = gates
        self.inventory = inventory
        self.simulated_cpus = simulated_cpus
        self.plain = plain
        self.wave = wave or FirstWave(1)
        self.images = images or ImageConfigs(backend)
        self._arrived = False

    def _arrive(self) -> None:
        if not self._arrived:
            self._arrived = True
            self.wave.arrive()

    async def serve(
        self,
        jobs: MemoryObjectReceiveStream[Planned],
        holder: Callable[[], contextlib.AbstractAsyncContextManager[Choice]],
    ) -> None:
        try:
            async with jobs, holder() as held, anyio.create_task_group() as tails:
                await self._serve(jobs, held, tails)
        finally:
            self._arrive()  # a slot that is done holds no other back

    async def _serve(
        self, jobs: MemoryObjectReceiveStream[Planned], held: Choice, tails: TaskGroup
    ) -> None:
        current = await self._next(jobs, held, tails)
        while current is not None:
            if not isinstance(current, _Warm):
                # Not gateable: a plain start on this slot's own GPUs and cores.
                self._arrive()
                await self.plain(current, pinned=held)
                current = await self._next(jobs, held, tails)
            elif await self._open(current, held):
                self._arrive()
                await _either(self.wave.started, current.over)
                following = await self._next(jobs, held, tails)
                await current.over.wait()
                current = following
            else:
                await current.over.wait()
                current = await self._next(jobs, held, tails)

    async def _open(self, warm: _Warm, held: Choice) -> bool:
        """Record the job RUNNING, then open its gate. False: it is not to run
        (no longer this run's job), or its container ended while gated (its tail
        records that)."""
        job = warm.planned.job
        await warm.armed.wait()
        if warm.over.is_set() or warm.container is None:
            return False
        if await self.run.current(job) is None:
            await self._drop(warm)
            return False
        # RUNNING is in the store before the gate opens, so a gated container of a
        # job still PLANNED never ran its job, whenever this process died.
        await record_running(self.run, job, warm.label, held, warm.container.id, self.inventory)
        warm.released.set()
        warm.gate.release()  # the one step between two jobs
        return True

    async def _drop(self, warm: _Warm) -> None:
        """A warm container whose job is no longer this run's to start."""
        warm.dropped = True
        if warm.container is not None and not warm.over.is_set():
            await self.backend.discard(warm.container)
        await warm.over.wait()

    async def _next(
        self, jobs: MemoryObjectReceiveStream[Planned], held: Choice, tails: TaskGroup
    ) -> _Warm | Planned | None:
        """The slot's next job, its container started behind a gate when it can be."""
        async for p in jobs:
            job = p.job
            label = job_label(job, self.run.total)
            if p.action == "reconcile" or not gating.gateable(job.spec):
                return p  # an earlier run's container may be there to adopt: plainly
            if await self.run.current(job) is None:
                continue
            config = with_gpus(
                job.spec,
                held.gpus,
                simulated=bool(self.inventory and self.inventory.simulated),
            )
            config = with_cpus(config, held.cpus, simulated=self.simulated_cpus, numa=held.numa)
            try:
                image = await self.images.get(job.image)
            except errors():
                return p  # the plain start reports what is wrong with the image
            gate = self.gates.make()
            gated = gating.gated_config(config, image, gate.directory)
            if gated is None:
                gate.close()
                return p
            self.run.sink(JobStateChanged(job.job_id, label, JobState.PLANNED, argv=job.args))
            warm = _Warm(p, label, gate)
            try:
                await tails.start(self._tail, warm, gated)
            except BackendError as exc:
                # As with a plain start: this job failed, the sweep goes on.
                with anyio.CancelScope(shield=True):
                    await self.run.record(
                        [Update(job.job_id, JobState.FAILED, message=exc.message)]
                    )
                    self.run.sink(
                        JobStateChanged(job.job_id, label, JobState.FAILED, detail=exc.message)
                    )
                continue
            return warm
        return None

    async def _tail(
        self,
        warm: _Warm,
        config: dict[str, Any],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """A warm container's whole life: create, attach, start (then the slot has
        it), follow its output, record how it ended and remove it."""
        job, label = warm.planned.job, warm.label
        # Set while a create is unanswered: the engine may make the container
        # anyway, and then only its name finds it.
        unanswered = True
        try:
            try:
                container = warm.container = await self.backend.create(job, config)
            except BackendError:
                unanswered = False  # refused (a name taken...): nothing of ours was made
                raise

            async def start() -> None:
                await self.backend.start(container)
                task_status.started()

            outcome = await self._follow(warm, container, start)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if warm.container is None:
                    if not unanswered:
                        raise
                    name = container_name(job.job_id)
                    await self.backend.discard(self.backend.by_name(name))
                elif warm.released.is_set():
                    await self.backend.remove(warm.container)
                else:
                    await self.backend.discard(warm.container)
            raise
        finally:
            warm.armed.set()  # whoever waits for it sees ``over`` then
            warm.over.set()
            warm.gate.close()
        if warm.dropped:
            await self.backend.discard(container)
            return
        if not warm.released.is_set():
            # Ended on its own while gated (the helper failed, or the engine killed
            # it): nothing of the job ran, as when a plain start fails.
            outcome = Update(
                job.job_id,
                JobState.FAILED,
                outcome.exit_code,
                "the pre-warmed container ended before its job was started",
            )
        if await self.run.record([outcome]):
            self.run.sink(
                JobStateChanged(
                    job.job_id, label, outcome.state, exit_code=outcome.exit_code, argv=job.args
                )
            )
        if warm.status is not None:
            # The job and all it left are gone, its output read: nothing to stop.
            await self.backend.discard(container)
        else:
            await self.backend.remove(container)

    async def _follow(self, warm: _Warm, container: Container, start: joboutput.Start) -> Update:
        """The container's output to its log until it exits, and how it exited.
        ``warm.over`` is set as soon as the helper says the job is over."""
        job = warm.planned.job

        async def watch_gate() -> None:
            await warm.gate.armed()
            warm.armed.set()
            warm.status = await warm.gate.ended()
            warm.over.set()

        try:
            async with anyio.create_task_group() as watch:
                watch.start_soon(watch_gate)
                await joboutput.pump(
                    container,
                    start=start,
                    sink=self.backend.sink,
                    job_id=job.job_id,
                    label=warm.label,
                    log_path=Path(job.log_path) if job.log_path else None,
                )
                watch.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The gate watcher never fails: callers see the pump's own error.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if warm.status is None and warm.released.is_set():
            # Written before the helper exited, so before the output ended: the
            # watcher may just not have read it yet.
            warm.status = warm.gate.ended_now()
        warm.armed.set()
        warm.over.set()
        if warm.status is not None:
            # The job's own exit status, which the container exits with (the
            # helper passes it on as tini does), and its output is all in the
            # log: the engine's wait, which also waits for the network's
            # teardown, would only say it again later.
            return exit_update(job.job_id, warm.status)
        return await self.backend.result(container, job.job_id)


async def record_running(
    run: Launch,
    job: JobRecord,
    label: str,
    held: Choice,
    container_id: str,
    inventory: GpuInventory | None,
) -> None:
    details: dict[str, object] = {}
    said: list[str] = []
    if held.gpus:
        details["gpu_ids"] = list(held.gpus)
        names = inventory.labels(held.gpus) if inventory else ",".join(held.gpus)
        if names != ",".join(held.gpus):
            details["gpu_indexes"] = names.split(",")
        said.append(f"GPUs {names}")
    if held.cpus:
        details["cpus"] = format_cpu_list(held.cpus)
        if held.numa is not None:
            details["numa_node"] = held.numa
        said.append(f"CPUs {details['cpus']}")
    await run.record(
        [Update(job.job_id, JobState.RUNNING, platform_id=container_id, details=details)]
    )
    extra = ", ".join(said) or None
    run.sink(JobStateChanged(job.job_id, label, JobState.RUNNING, detail=extra))
