"""What the jobs of a sweep reported, read once for every platform.

A job reports metrics by printing a JSON object on a line of its own (see
:mod:`caliban.core.metrics`). Each ended job's output is read through
:meth:`Platform.logs <caliban.platforms.base.Platform.logs>` (a local log file,
a pod's log, whatever the platform keeps) and what it reported is kept in the
store, so the next call reads no output at all. Unfinished jobs are refreshed
first and shown without metrics; a job whose output cannot be read now
(a BackendError: no log, no pod any more) is shown as such and read again next
time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from caliban.core.metrics import MetricsReader
from caliban.core.results import Result
from caliban.errors import CalibanError

if TYPE_CHECKING:
    from caliban.spec import JobRecord

__all__ = ["results"]

#: Outputs read at once: each is a file or one HTTP stream.
READERS = 8


async def _read(host: Any, job: JobRecord) -> dict[str, Any] | None:
    platform = await host.platform(job.platform)
    reader = MetricsReader()
    async for chunk in platform.logs(job):
        reader.feed(chunk)
    return reader.close()


async def results(host: Any, jobs: Sequence[JobRecord]) -> list[Result]:
    """One :class:`Result` per job of ``jobs`` (already refreshed), in their order."""
    store = await host.store()
    ended = [j for j in jobs if j.state.terminal]
    kept = await store.metrics([j.job_id for j in ended])
    found: dict[str, dict[str, Any] | None] = {}
    missing: dict[str, str] = {}
    limit = anyio.Semaphore(READERS)

    async def read(job: JobRecord) -> None:
        async with limit:
            try:
                found[job.job_id] = await _read(host, job)
            except CalibanError as exc:
                missing[job.job_id] = exc.message

    async with anyio.create_task_group() as tg:
        for job in ended:
            if job.job_id not in kept:
                tg.start_soon(read, job)
    await store.keep_metrics(found)
    kept.update(found)
    out = []
    for job in jobs:
        if not job.state.terminal:
            out.append(Result(job, None, f"{job.state.value.lower()}: no metrics yet"))
        elif job.job_id in missing:
            out.append(Result(job, None, f"output not available: {missing[job.job_id]}"))
        else:
            metrics = kept.get(job.job_id)
            out.append(Result(job, metrics or {}, None if metrics else "reported no metrics"))
    return out
