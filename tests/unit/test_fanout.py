"""The fan-out engine with an in-memory platform: pacing, uncertain creates, shared pauses."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from caliban.adapters.store import PlanItem, Planned, Store
from caliban.errors import AuthError, OutcomeUnknown, QuotaError
from caliban.events import Event, RetryScheduled
from caliban.limits import Pacing, RetryPolicy
from caliban.platforms.base import Submitter
from caliban.spec import JobRecord, JobState, Platform, Update
from caliban.sweep.fanout import submit_all


async def _find_each(finder: Submitter, jobs: Sequence[JobRecord]) -> dict[str, Update]:
    found = {}
    for job in jobs:
        update = await finder.find(job)
        if update is not None:
            found[job.job_id] = update
    return found


class MemoryPlatform:
    """Creates jobs in a dict; ``script[index]`` lists what each create of that job does."""

    def __init__(self, script: dict[int, list[str]] | None = None) -> None:
        self.script = script or {}
        self.jobs: dict[str, str] = {}
        self.log: list[tuple[str, int, float]] = []

    def quota_key(self, job: JobRecord) -> str:
        return "p/r"

    async def create(self, job: JobRecord) -> Update:
        self.log.append(("create", job.index, anyio.current_time()))
        step = (self.script.get(job.index) or ["ok"]).pop(0)
        if step == "lost":  # created, but the answer never came (a timeout)
            self.jobs[job.job_id] = f"name-{job.index}"
            raise OutcomeUnknown("timed out", settle=0.3)
        if step == "429":
            raise QuotaError("slow down", retryable=True)
        if step == "auth":
            raise AuthError("refused", status=403)
        self.jobs[job.job_id] = f"name-{job.index}"
        return Update(job.job_id, JobState.SUBMITTED, platform_id=self.jobs[job.job_id])

    async def find(self, job: JobRecord) -> Update | None:
        self.log.append(("find", job.index, anyio.current_time()))
        name = self.jobs.get(job.job_id)
        return Update(job.job_id, JobState.SUBMITTED, platform_id=name) if name else None

    async def find_many(self, jobs: Sequence[JobRecord]) -> dict[str, Update]:
        return await _find_each(self, jobs)


async def _planned(store: Store, n: int) -> list[Planned]:
    xid = await store.xgroup("g", "u")
    sid = await store.container_spec("vertex:x", "x", {}, "u")
    items = [
        PlanItem(
            index=i,
            args=("--i", str(i)),
            kwargs={"i": i},
            job_id=f"job{i:03d}",
            image="x",
            spec={},
            details={"region": "r"},
        )
        for i in range(n)
    ]
    return await store.plan(
        xgroup_id=xid, container_spec_id=sid, platform=Platform.VERTEX, user="u", items=items
    )


@pytest.mark.parametrize("rate", [1, 30, 60, 119, 120, 600, 6000])
def test_pacing_never_exceeds_a_quota_counted_over_any_minute(rate: float) -> None:
    pacing = Pacing(rate_per_minute=rate)
    assert pacing.burst >= 1
    assert pacing.burst + 60 * pacing.rate_per_second <= rate or rate < 2
    assert pacing.rate_per_second >= rate / 2 / 60  # and never absurdly slow


async def test_a_timed_out_create_waits_to_settle_without_holding_the_others(
    tmp_path: Path,
) -> None:
    platform = MemoryPlatform({0: ["lost"]})
    async with Store(tmp_path / "db") as store:
        planned = await _planned(store, 5)
        await submit_all(
            planned,
            platform,
            store=store,
            sink=lambda e: None,
            pacing=Pacing(6000, 4, RetryPolicy(initial=0.01)),
            total=5,
        )
        jobs = await store.jobs(job_ids=[p.job.job_id for p in planned])
    assert [j.state for j in jobs] == [JobState.SUBMITTED] * 5
    assert jobs[0].platform_id == "name-0"
    creates = [(i, t) for op, i, t in platform.log if op == "create"]
    assert sorted(i for i, _ in creates) == [0, 1, 2, 3, 4]  # job 0 was never sent again
    (found_at,) = [t for op, i, t in platform.log if op == "find" and i == 0]
    sent_at = next(t for i, t in creates if i == 0)
    assert found_at - sent_at >= 0.29  # it looked only once the server had had time
    assert max(t for i, t in creates if i) < found_at  # the others did not wait for it


async def test_a_429_without_a_hint_holds_the_whole_bucket(tmp_path: Path) -> None:
    random.seed(3)
    platform = MemoryPlatform({0: ["429"]})
    events: list[Event] = []
    async with Store(tmp_path / "db") as store:
        planned = await _planned(store, 3)
        await submit_all(
            planned,
            platform,
            store=store,
            sink=events.append,
            pacing=Pacing(6000, 2, RetryPolicy(initial=0.4)),
            total=3,
        )
    (retry,) = [e for e in events if isinstance(e, RetryScheduled)]
    assert retry.delay > 0.05
    refused_at = next(t for op, i, t in platform.log if op == "create" and i == 0)
    # Job 1 was already on its way; job 2 waited for the pause like job 0's retry.
    later = [t for op, i, t in platform.log if op == "create" and i == 2]
    assert later and later[0] - refused_at >= retry.delay - 0.01


async def test_quota_429s_get_more_attempts_than_other_errors(tmp_path: Path) -> None:
    platform = MemoryPlatform({0: ["429"] * 9})
    async with Store(tmp_path / "db") as store:
        planned = await _planned(store, 1)
        await submit_all(
            planned,
            platform,
            store=store,
            sink=lambda e: None,
            pacing=Pacing(6000, 1, RetryPolicy(attempts=3, quota_attempts=10, initial=0.001)),
            total=1,
        )
        (job,) = await store.jobs(job_ids=[p.job.job_id for p in planned])
    assert job.state is JobState.SUBMITTED
    assert len([op for op, _, _ in platform.log if op == "create"]) == 10


async def test_a_refused_login_stops_everything_with_one_error(tmp_path: Path) -> None:
    platform = MemoryPlatform({i: ["auth"] for i in range(8)})
    async with Store(tmp_path / "db") as store:
        planned = await _planned(store, 8)
        with pytest.raises(AuthError, match="refused"):
            await submit_all(
                planned, platform, store=store, sink=lambda e: None, pacing=Pacing(6000, 4), total=8
            )
        left = await store.jobs(xgroup="g")
    assert {j.state for j in left} == {JobState.PLANNED}


async def test_a_timed_out_create_is_looked_up_twice_before_it_is_sent_again(
    tmp_path: Path,
) -> None:
    """The job shows up only after the first lookup: the second one finds it."""

    class Slow:
        def __init__(self) -> None:
            self.creates = 0
            self.finds = 0

        def quota_key(self, job: JobRecord) -> str:
            return "q"

        async def create(self, job: JobRecord) -> Update:
            self.creates += 1
            raise OutcomeUnknown("timed out", settle=0.05)

        async def find(self, job: JobRecord) -> Update | None:
            self.finds += 1
            return (
                Update(job.job_id, JobState.SUBMITTED, platform_id="remote/1")
                if self.finds >= 2
                else None
            )

        async def find_many(self, jobs: Sequence[JobRecord]) -> dict[str, Update]:
            return await _find_each(self, jobs)

    submitter = Slow()
    async with Store(tmp_path / "c.db") as store:
        planned = await _planned(store, 1)
        await submit_all(
            planned,
            submitter,
            store=store,
            sink=lambda e: None,
            pacing=Pacing(rate_per_minute=6000),
            total=1,
        )
        jobs = await store.jobs(job_ids=[p.job.job_id for p in planned])
    assert submitter.creates == 1 and submitter.finds == 2
    assert jobs[0].state is JobState.SUBMITTED and jobs[0].platform_id == "remote/1"
