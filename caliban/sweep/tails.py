"""The end of every failed job's output, on every platform (``caliban logs --failed``).

Written once, here, on top of :meth:`Platform.logs`. A platform that can read
many jobs at once (:class:`~caliban.platforms.base.Tails`: Vertex, with one
Cloud Logging query for all of them) is asked once per sweep; any other
platform is streamed job by job, a few at a time, keeping only the last lines
in memory. Each block is tagged with the likely cause from the pure classifier
:mod:`caliban.core.causes`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from caliban.core import causes
from caliban.errors import AuthError, CalibanError
from caliban.platforms.base import Platform, Tails, job_label
from caliban.spec import JobRecord, JobState
from caliban.spec import Platform as Kind

# Log streams read at once for platforms without a batch read (local files,
# pod logs): enough to overlap round trips without flooding an API server.
MAX_STREAMS = 8
# Lines read per job to find its cause, however few are shown: a traceback's
# header and its last line are a few lines apart.
CONTEXT = 100


@dataclass(frozen=True)
class FailedOutput:
    """One failed job: its label in the sweep, the end of its output, a likely cause."""

    job: JobRecord
    label: str
    lines: tuple[str, ...]
    cause: causes.Cause | None
    #: Why no output could be read (the job never started, its pod is gone...).
    error: str | None = None


async def _streamed(platform: Platform, job: JobRecord, lines: int) -> list[str]:
    kept: deque[str] = deque(maxlen=lines)
    partial = ""
    async for chunk in platform.logs(job):
        partial += chunk
        *done, partial = partial.split("\n")
        kept.extend(line.rstrip("\r") for line in done)
    if partial:
        kept.append(partial.rstrip("\r"))
    return list(kept)


async def tails(
    platform: Platform, jobs: Sequence[JobRecord], lines: int
) -> dict[str, tuple[list[str], str | None]]:
    """The last ``lines`` lines of each job's output (and why none, if so), by job id."""
    out: dict[str, tuple[list[str], str | None]] = {}
    if isinstance(platform, Tails):
        found = await platform.tails(jobs, lines)
        for job in jobs:
            got = found.get(job.job_id)
            out[job.job_id] = (list(got), None) if got else ([], "no output recorded")
        return out
    limiter = anyio.CapacityLimiter(MAX_STREAMS)

    async def one(job: JobRecord) -> None:
        async with limiter:
            try:
                out[job.job_id] = (await _streamed(platform, job, lines), None)
            except AuthError:
                raise  # the same for every job: one line, not one per job
            except CalibanError as exc:
                out[job.job_id] = ([], exc.message)

    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(one, job)
    return out


async def failed_output(
    platforms: dict[Kind, Platform], jobs: Sequence[JobRecord], lines: int
) -> list[FailedOutput]:
    """For the failed ones of ``jobs`` (in sweep order), the end of their output."""
    failed = [j for j in jobs if j.state is JobState.FAILED]
    total = max((j.index for j in jobs), default=-1) + 1
    read: dict[str, tuple[list[str], str | None]] = {}
    for kind, platform in platforms.items():
        mine = [j for j in failed if j.platform is kind]
        if mine:
            read.update(await tails(platform, mine, max(lines, CONTEXT)))
    result = []
    for job in sorted(failed, key=lambda j: (j.index, j.created)):
        kept, error = read.get(job.job_id, ([], "no output recorded"))
        cause = causes.classify(kept, exit_code=job.exit_code, message=job.message)
        result.append(
            FailedOutput(
                job, job_label(job, total), tuple(kept[-lines:]), cause, None if kept else error
            )
        )
    return result
