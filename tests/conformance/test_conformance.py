"""What every platform does the same way, whatever it runs on.

Each test takes ``platform_case`` (see conftest.py): a session whose registry maps
a kind to the platform under test, a request builder, a way to make jobs end on
the platform, failure knobs and counters of what reached the platform. Jobs go
through the real sweep engine and a real SQLite store.
"""

from __future__ import annotations

from collections import Counter

import pytest

from caliban.options import ProjectOptions
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from caliban.sweep import engine
from tests.conformance.conftest import RETRYING_CREATES, PlatformCase

XGROUP = "conformance"
ACCEPTED = (JobState.SUBMITTED, JobState.RUNNING)


async def _launch(
    case: PlatformCase, session: Session, project: ProjectOptions, count: int
) -> list[JobRecord]:
    request = case.request(project, {"seed": list(range(count))}, XGROUP)
    if case.start is not None:
        launched = await case.start(session, request)
    else:
        result = await engine.submit(session, case.kind, request)
        assert result.ok, result.counts
        launched = result.jobs
    jobs = sorted(launched, key=lambda j: j.index)
    assert [j.index for j in jobs] == list(range(count))
    return jobs


async def _finish(case: PlatformCase, job: JobRecord, state: JobState) -> None:
    done = case.finish(job, state)
    if done is not None:
        await done


async def _resubmit(case: PlatformCase, session: Session) -> list[JobRecord]:
    if case.resubmit is not None:
        return await case.resubmit(session, XGROUP)
    return (await session.resubmit(xgroup=XGROUP)).jobs


async def _states(session: Session, *, refresh: bool = True) -> list[JobState]:
    jobs = await session.status(xgroup=XGROUP, refresh=refresh)
    return [j.state for j in sorted(jobs, key=lambda j: j.index)]


async def test_platform_states_map_to_job_states(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 3)
        assert all(j.state in ACCEPTED for j in jobs)
        await _finish(platform_case, jobs[0], JobState.SUCCEEDED)
        await _finish(platform_case, jobs[1], JobState.FAILED)
        states = await _states(session)
    assert states[:2] == [JobState.SUCCEEDED, JobState.FAILED]
    assert states[2] in ACCEPTED


async def test_a_create_whose_answer_was_lost_is_found_not_sent_again(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    platform_case.lose_answer(1)
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 3)
    assert all(j.state in ACCEPTED for j in jobs)
    assert platform_case.lost() == 1  # the fault really happened
    ids = [j.job_id for j in jobs]
    assert platform_case.creates() == Counter(ids)
    assert platform_case.made() == Counter(ids)


@pytest.mark.parametrize("platform_case", RETRYING_CREATES, indirect=True)
async def test_a_create_refused_retryably_is_sent_again_once(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    platform_case.refuse_once(0)
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 2)
    assert all(j.state in ACCEPTED for j in jobs)
    first, second = (j.job_id for j in jobs)
    assert platform_case.creates() == Counter({first: 2, second: 1})
    assert platform_case.made() == Counter({first: 1, second: 1})


async def test_stop_ends_unfinished_jobs_and_leaves_finished_ones(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 3)
        await _finish(platform_case, jobs[0], JobState.SUCCEEDED)
        assert (await _states(session))[0] is JobState.SUCCEEDED
        stopped = await session.stop(xgroup=XGROUP)
        assert sorted(j.job_id for j in stopped) == sorted(j.job_id for j in jobs[1:])
        states = await _states(session, refresh=False)
    assert states[0] is JobState.SUCCEEDED
    assert all(s in (JobState.STOPPED, JobState.CANCELLING) for s in states[1:]), states


async def test_stop_does_not_rewrite_a_job_that_ended_unseen(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 2)
        # It ends on the platform, but nothing has refreshed it yet: the store
        # still says it runs when `stop` asks the platform to cancel it.
        await _finish(platform_case, jobs[0], JobState.SUCCEEDED)
        await session.stop(xgroup=XGROUP)
        states = await _states(session)
    assert states[0] is JobState.SUCCEEDED
    assert states[1] in (JobState.STOPPED, JobState.CANCELLING)


async def test_refresh_asks_once_per_target(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 2 * platform_case.targets)
        before = platform_case.lists()
        fresh = await session.refresh(jobs)
        calls = platform_case.lists() - before
    assert [j.job_id for j in fresh] == [j.job_id for j in jobs]
    assert len(calls) == platform_case.targets
    assert set(calls.values()) == {1}, calls


async def test_resubmit_launches_new_jobs_for_failed_ones_only(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 3)
        await _finish(platform_case, jobs[0], JobState.SUCCEEDED)
        await _finish(platform_case, jobs[1], JobState.FAILED)
        await _states(session)
        before = platform_case.creates()
        resubmitted = await _resubmit(platform_case, session)
        sent = platform_case.creates() - before
        latest = sorted(await session.status(xgroup=XGROUP), key=lambda j: j.index)
    [again] = resubmitted
    assert again.job_id not in {j.job_id for j in jobs}
    assert (again.index, again.args) == (jobs[1].index, jobs[1].args)
    assert again.state in ACCEPTED
    assert sent == Counter({again.job_id: 1})
    assert [j.job_id for j in latest] == [jobs[0].job_id, again.job_id, jobs[2].job_id]
    assert latest[0].state is JobState.SUCCEEDED
    assert latest[2].state in ACCEPTED


# Only the in-memory case gives its jobs output yet: the real cases' stand-ins have no
# per-job output wired in (tests/integration/test_logs_failed.py and test_cloud_logs.py
# cover local and Vertex through their own set-up).
@pytest.mark.parametrize("platform_case", ["memory"], indirect=True)
async def test_failed_logs_show_only_failed_jobs_with_their_output(
    platform_case: PlatformCase, project: ProjectOptions
) -> None:
    async with platform_case.session() as session:
        jobs = await _launch(platform_case, session, project, 3)
        platform_case.finish(jobs[0], JobState.FAILED)
        platform_case.finish(jobs[1], JobState.SUCCEEDED)
        platform_case.finish(jobs[2], JobState.FAILED)
        found = await session.failed_logs(XGROUP, lines=5)
    assert [f.job.job_id for f in found] == [jobs[0].job_id, jobs[2].job_id]
    assert [f.label.split()[0] for f in found] == ["1/3", "3/3"]
    for block, job in zip(found, (jobs[0], jobs[2]), strict=True):
        # The in-memory platform's output is the job's own command line.
        assert block.lines and block.lines[-1].endswith(" ".join(job.args)), block
        assert block.error is None
