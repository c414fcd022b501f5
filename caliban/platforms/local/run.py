"""Running a planned sweep on the local engine: bounded, GPU-pinned, interruptible.

``max_parallel`` workers pull jobs in order from one queue, so memory stays
flat however long the sweep is. In GPU mode each job also holds its GPU ids
(and with ``cpus_per_job`` its cores) from one pool for exactly as long as its
container runs. Whatever way the
sweep ends (done, a fatal error, Ctrl-C), no job of it is left non-terminal
in the store and no container of it is left on the engine.
"""

from __future__ import annotations

import contextlib
import math
import shlex
from collections.abc import AsyncIterator, Callable, Sequence, Set
from pathlib import Path
from typing import Any

import anyio

from caliban.adapters.store import Planned, Store
from caliban.core.topology import Choice, format_cpu_list
from caliban.errors import BackendError, StoreError
from caliban.events import JobStateChanged, Notice, Sink
from caliban.limits import ResourcePool
from caliban.platforms.local.containers import LocalBackend, Outcome
from caliban.platforms.local.cpus import CpuInventory
from caliban.platforms.local.gpus import GpuInventory
from caliban.spec import JobRecord, JobState

# How long a run's claims outlive its last sign of life, when its pid cannot be
# checked (another host) or was reused; renewed four times per lease.
LEASE = 60.0


def label_for(job: JobRecord, total: int) -> str:
    width = len(str(total))
    return f"{job.index + 1:>{width}}/{total} {job.short_id}"


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[Choice]:
    yield Choice((), ())


def slots(
    inventory: GpuInventory | None, gpus_per_job: int, cpus: CpuInventory | None, cpus_per_job: int
) -> int | None:
    """How many jobs the GPUs and cores allow at once (None: no bound from them)."""
    bounds = []
    if inventory is not None and inventory.ids and gpus_per_job:
        bounds.append(len(inventory.ids) // gpus_per_job)
    if cpus is not None and cpus_per_job:
        bounds.append(len(cpus.cores) // cpus_per_job)
    return max(1, min(bounds)) if bounds else None


async def execute(
    planned: Sequence[Planned],
    *,
    backend: LocalBackend,
    store: Store,
    sink: Sink,
    total: int,
    max_parallel: int,
    inventory: GpuInventory | None,
    gpus_per_job: int,
    run_id: str | None = None,
    claimed: Set[str] | None = None,
    cpus: CpuInventory | None = None,
    cpus_per_job: int = 0,
) -> list[JobRecord]:
    """Run every ``new``/``reconcile`` job (of those in ``claimed``, when given)
    and return all of them as finally recorded.

    ``run_id``: the store's run that claimed them; its lease is renewed while
    the sweep goes on, and a job whose claim was lost meanwhile is not launched.
    """
    todo = [
        p
        for p in planned
        if p.action in ("new", "reconcile") and (claimed is None or p.job.job_id in claimed)
    ]
    gpu_ids = inventory.ids if inventory is not None else ()
    cores = cpus.cores if cpus is not None and cpus_per_job else ()
    pool: ResourcePool | None = None
    if gpu_ids or cores:
        # Topology rows are physical GPUs; a MIG instance sits where its GPU does.
        near = cpus.affinity if cpus is not None else {}
        affinity = {
            g: near[inventory.device(g).gpu]
            for g in gpu_ids
            if inventory is not None and inventory.device(g).gpu in near
        }
        pool = ResourcePool(gpu_ids, cores, affinity)
    workers = max(1, min(max_parallel, len(todo)))
    bound = slots(inventory, gpus_per_job, cpus if cores else None, cpus_per_job)
    if bound is not None:
        workers = min(workers, bound)
    send, receive = anyio.create_memory_object_stream[Planned](math.inf)
    for p in todo:
        send.send_nowait(p)
    send.close()

    async def run_one(p: Planned, reap: Callable[[Any], None]) -> None:
        job = p.job
        label = label_for(job, total)
        current = await store.job(job.job_id)
        # `caliban stop` from another terminal may have stopped it while queued.
        if current is None or current.state.terminal:
            return
        # Our lease lapsed (a suspended laptop) and another run took the job over.
        if run_id is not None and not await store.holds(run_id, job.job_id):
            return
        sink(JobStateChanged(job.job_id, label, JobState.PLANNED, argv=job.args))
        wanted_gpus = gpus_per_job if gpu_ids else 0
        wanted_cpus = cpus_per_job if cores else 0
        holder = pool.hold(wanted_gpus, wanted_cpus) if pool is not None else _nothing()
        async with holder as held:
            gpu_ids_held = held.gpus

            async def on_started(container_id: str) -> None:
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
                await store.transition(
                    job.job_id, JobState.RUNNING, platform_id=container_id, details=details
                )
                extra = ", ".join(said) or None
                sink(JobStateChanged(job.job_id, label, JobState.RUNNING, detail=extra))

            try:
                outcome = await backend.run(
                    job,
                    label=label,
                    gpu_ids=gpu_ids_held,
                    simulated_gpus=bool(inventory and inventory.simulated),
                    cpus=held.cpus,
                    simulated_cpus=bool(cpus and cpus.simulated),
                    numa=held.numa,
                    log_path=Path(job.log_path) if job.log_path else None,
                    on_started=on_started,
                    adopt=p.action == "reconcile",
                    reap=reap,
                )
            except BackendError as exc:
                # This job's container could not be made or started (a name
                # taken, a bad mount, no GPU driver): the job failed, the sweep goes on.
                with anyio.CancelScope(shield=True):
                    await store.transition(job.job_id, JobState.FAILED, message=exc.message)
                    sink(JobStateChanged(job.job_id, label, JobState.FAILED, detail=exc.message))
                return
        await _record(store, sink, job, label, outcome)

    async def worker(reap: Callable[[Any], None]) -> None:
        async with receive.clone() as jobs:
            async for p in jobs:
                await run_one(p, reap)

    lease = anyio.CancelScope()

    async def keep_lease(run: str) -> None:
        with lease:
            while True:
                await anyio.sleep(LEASE / 4)
                try:
                    await store.renew_run(run, lease=LEASE)
                except StoreError as exc:  # a busy store: the next renewal may work
                    sink(Notice(f"could not renew this run's claims: {exc.message}", "warning"))

    try:
        async with anyio.create_task_group() as reaper:
            if run_id is not None:
                reaper.start_soon(keep_lease, run_id)

            def reap(container: Any) -> None:
                reaper.start_soon(backend.remove, container)

            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(worker, reap)
            lease.cancel()
    finally:
        receive.close()
        with anyio.CancelScope(shield=True):
            await _stop_leftovers(store, sink, [p.job for p in todo], total, run_id)
    return await store.jobs(job_ids=[p.job.job_id for p in planned])


async def _record(store: Store, sink: Sink, job: JobRecord, label: str, outcome: Outcome) -> None:
    changed = await store.transition(
        job.job_id, outcome.state, exit_code=outcome.exit_code, message=outcome.message
    )
    if changed:
        sink(
            JobStateChanged(
                job.job_id, label, outcome.state, exit_code=outcome.exit_code, argv=job.args
            )
        )


async def _stop_leftovers(
    store: Store, sink: Sink, jobs: Sequence[JobRecord], total: int, run_id: str | None
) -> None:
    """Jobs of this run that did not finish (interrupted, or never started) become STOPPED,
    except those another run took over (this one's lease lapsed): they are its to record."""
    if not jobs:
        return
    current = await store.jobs(job_ids=[j.job_id for j in jobs])
    left = [j for j in current if not j.state.terminal]
    if run_id is not None and left:
        held = await store.owners([j.job_id for j in left])
        left = [j for j in left if j.job_id not in held or held[j.job_id].run_id == run_id]
    if not left:
        return
    await store.transitions(
        [(j.job_id, JobState.STOPPED, None, "interrupted", None, None) for j in left]
    )
    for j in left:
        sink(JobStateChanged(j.job_id, label_for(j, total), JobState.STOPPED, detail="interrupted"))
    sink(
        Notice(
            f"{len(left)} job(s) recorded as STOPPED; `caliban resubmit --xgroup "
            f"{shlex.quote(left[0].xgroup)}` runs them again",
            level="warning",
        )
    )
