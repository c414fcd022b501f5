"""Platforms jobs run on, one module each, loaded only when used.

Every backend answers the same questions about jobs it launched, so
``status``, ``stop``, ``resubmit`` and ``logs`` work the same everywhere:

* :meth:`Backend.refresh` - the platform's view of many jobs at once (one list
  call per region/cluster, not one call per job);
* :meth:`Backend.cancel` - stop jobs, concurrently;
* :meth:`Backend.logs` - a job's output.

How jobs are *launched* differs too much to share a signature (a local job
runs to completion in a container holding GPUs; a Vertex job is accepted and
runs elsewhere), so each backend has its own launch method and the
orchestrator drives it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from caliban.spec import JobRecord, JobState


@dataclass(frozen=True)
class Update:
    """What the platform says about one job."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    message: str | None = None
    platform_id: str | None = None


class Backend(Protocol):
    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]: ...

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]: ...

    def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]: ...
