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
import functools
import math
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from caliban.adapters.store import Planned
from caliban.core.topology import Choice
from caliban.errors import BackendError
from caliban.events import JobStateChanged, Notice
from caliban.limits import ResourcePool
from caliban.platforms.base import Launch, job_label
from caliban.platforms.local import prewarm
from caliban.platforms.local.containers import LocalBackend
from caliban.platforms.local.cpus import CpuInventory
from caliban.platforms.local.gate import Gates
from caliban.platforms.local.gpus import GpuInventory
from caliban.spec import JobRecord, JobState, Update


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
    run: Launch,
    max_parallel: int,
    inventory: GpuInventory | None,
    gpus_per_job: int,
    cpus: CpuInventory | None = None,
    cpus_per_job: int = 0,
    gates: Gates | None = None,
) -> None:
    """Run every ``new``/``reconcile`` job of ``planned`` to its end, recording
    each change through ``run``; a job ``run`` no longer hands over (stopped
    meanwhile, or its claim lost) is not started.

    ``gates``: pre-warmed starts (see :mod:`caliban.platforms.local.gate`); each
    worker is then a slot holding one set of GPUs and cores for the whole sweep,
    so a container can be made for it before its current job ends."""
    sink, total = run.sink, run.total
    todo = [p for p in planned if p.action in ("new", "reconcile")]
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

    wanted_gpus = gpus_per_job if gpu_ids else 0
    wanted_cpus = cpus_per_job if cores else 0

    def holder() -> contextlib.AbstractAsyncContextManager[Choice]:
        return pool.hold(wanted_gpus, wanted_cpus) if pool is not None else _nothing()

    async def run_one(
        p: Planned, reap: Callable[[Any], None], pinned: Choice | None = None
    ) -> None:
        job = p.job
        label = job_label(job, total)
        if await run.current(job) is None:
            return
        sink(JobStateChanged(job.job_id, label, JobState.PLANNED, argv=job.args))
        async with contextlib.nullcontext(pinned) if pinned is not None else holder() as held:
            gpu_ids_held = held.gpus

            async def on_started(container_id: str) -> None:
                await prewarm.record_running(run, job, label, held, container_id, inventory)

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
                    await run.record([Update(job.job_id, JobState.FAILED, message=exc.message)])
                    sink(JobStateChanged(job.job_id, label, JobState.FAILED, detail=exc.message))
                return
        if await run.record([outcome]):
            sink(
                JobStateChanged(
                    job.job_id, label, outcome.state, exit_code=outcome.exit_code, argv=job.args
                )
            )

    async def worker(reap: Callable[[Any], None]) -> None:
        async with receive.clone() as jobs:
            async for p in jobs:
                await run_one(p, reap)

    try:
        async with anyio.create_task_group() as reaper:

            def reap(container: Any) -> None:
                reaper.start_soon(backend.remove, container)

            wave = prewarm.FirstWave(workers)
            # Plain starts (no gates) never inspect an image here.
            images = prewarm.ImageConfigs(backend) if gates is not None else None
            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    if gates is None:
                        tg.start_soon(worker, reap)
                    else:
                        assert images is not None
                        slot = prewarm.Slot(
                            backend=backend,
                            run=run,
                            gates=gates,
                            inventory=inventory,
                            simulated_cpus=bool(cpus and cpus.simulated),
                            plain=functools.partial(run_one, reap=reap),
                            wave=wave,
                            images=images,
                        )
                        tg.start_soon(slot.serve, receive.clone(), holder)
    finally:
        receive.close()
        if gates is not None:
            gates.close()
        with anyio.CancelScope(shield=True):
            await _stop_leftovers(run, [p.job for p in todo])


async def _stop_leftovers(run: Launch, jobs: Sequence[JobRecord]) -> None:
    """Jobs of this run that did not finish (interrupted, or never started) become STOPPED,
    except those another run took over (this one's lease lapsed): they are its to record."""
    if not jobs:
        return
    left = await run.unfinished(jobs)
    if not left:
        return
    sink, total = run.sink, run.total
    await run.record([Update(j.job_id, JobState.STOPPED, message="interrupted") for j in left])
    for j in left:
        sink(JobStateChanged(j.job_id, job_label(j, total), JobState.STOPPED, detail="interrupted"))
    sink(
        Notice(
            f"{len(left)} job(s) recorded as STOPPED; `caliban resubmit --xgroup "
            f"{shlex.quote(left[0].xgroup)}` runs them again",
            level="warning",
        )
    )
