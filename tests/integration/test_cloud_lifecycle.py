"""status / stop / resubmit of Vertex jobs through the library API, against the local server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from caliban.limits import RetryPolicy
from caliban.platforms.vertex import plan as cloud_run
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from tests.conftest import MakeProject
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import JOB_LABEL, assert_exactly_once, cloud_request
from tests.integration.conftest import OpenSession, VertexRequest

# Every Vertex JobState, and what caliban records for it.
STATES = {
    "JOB_STATE_UNSPECIFIED": JobState.UNKNOWN,
    "JOB_STATE_QUEUED": JobState.SUBMITTED,
    "JOB_STATE_PENDING": JobState.SUBMITTED,
    "JOB_STATE_PAUSED": JobState.SUBMITTED,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.CANCELLING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.STOPPED,
}


async def _sweep(
    s: Session, folder: Path, key: Path, vertex: FakeVertex, n: int, **kw: object
) -> list[JobRecord]:
    kw.setdefault("xgroup", "life")
    result = await s.cloud(
        cloud_request(folder, key, vertex, experiments={"i": list(range(n))}, **kw)
    )
    assert result.ok
    return result.jobs


Sweep = Callable[..., Awaitable[list[JobRecord]]]


@pytest.fixture
def sweep(
    make_project: MakeProject, service_account_file: Path, vertex_server: FakeVertex
) -> Sweep:
    """``_sweep(s, n, **kw)`` of a new project with the fake key and server."""

    async def run(s: Session, n: int, **kw: object) -> list[JobRecord]:
        return await _sweep(s, make_project(), service_account_file, vertex_server, n, **kw)

    return run


def _remote(vertex: FakeVertex, job: JobRecord) -> str:
    (found,) = vertex.jobs_with_label(JOB_LABEL, job.job_id)
    return found.name


@pytest.mark.parametrize("n", [12, 150])
async def test_status_is_one_list_call_per_region_and_maps_every_state(
    vertex_server: FakeVertex, sweep: Sweep, cloud_session: OpenSession, n: int
) -> None:
    regions = ("us-central1", "europe-west4")
    vertex_server.cancel_delay = 3600  # CANCELLING stays CANCELLING
    async with cloud_session() as s:
        jobs = await sweep(s, n, regions=regions)
        names = list(STATES)
        for job in jobs:
            vertex_server.advance(_remote(vertex_server, job), to=names[job.index % len(names)])
        before = vertex_server.list_calls
        fresh = await s.status(xgroup="life", max_jobs=0)
        assert vertex_server.list_calls - before == len(regions)
        assert vertex_server.get_calls == 0
        for job in fresh:
            state = names[job.index % len(names)]
            assert job.state is STATES[state], (state, job.state)
            assert job.platform_id == _remote(vertex_server, job)
        by_state = {names[j.index % len(names)]: j for j in fresh}
        assert by_state["JOB_STATE_EXPIRED"].message == "the job expired before it could run"
        assert "partially" in str(by_state["JOB_STATE_PARTIALLY_SUCCEEDED"].message)
        assert by_state["JOB_STATE_CANCELLED"].message == "CANCELED"
        # Terminal jobs are not asked about again; the rest are, still one call per region.
        before = vertex_server.list_calls
        again = await s.status(xgroup="life", max_jobs=0)
        assert vertex_server.list_calls - before == len(regions)
        assert [j.state for j in again] == [j.state for j in fresh]


async def test_status_records_failures_with_their_reason(
    vertex_server: FakeVertex, sweep: Sweep, cloud_session: OpenSession
) -> None:
    async with cloud_session() as s:
        jobs = await sweep(s, 2)
        vertex_server.fail(_remote(vertex_server, jobs[0]), 8, "Quota exceeded for GPUs.")
        vertex_server.advance(_remote(vertex_server, jobs[1]), "JOB_STATE_RUNNING")
        fresh = await s.status(xgroup="life")
    assert [j.state for j in fresh] == [JobState.FAILED, JobState.RUNNING]
    assert fresh[0].message == "Quota exceeded for GPUs."


async def test_a_job_missing_on_the_platform_becomes_unknown(
    vertex_server: FakeVertex, sweep: Sweep, cloud_session: OpenSession
) -> None:
    async with cloud_session() as s:
        jobs = await sweep(s, 2)
        vertex_server.job(_remote(vertex_server, jobs[0])).deleted = True
        fresh = await s.status(xgroup="life")
    assert [j.state for j in fresh] == [JobState.UNKNOWN, JobState.SUBMITTED]
    assert fresh[0].message == "not found in us-central1"


async def test_status_survives_a_flaky_list(
    vertex_server: FakeVertex, sweep: Sweep, cloud_session: OpenSession
) -> None:
    async with cloud_session() as s:
        jobs = await sweep(s, 3)
        vertex_server.advance(to="JOB_STATE_RUNNING")
        vertex_server.fail_next("list", 2, 503)
        fresh = await s.status(xgroup="life")
    assert [j.state for j in fresh] == [JobState.RUNNING] * 3
    assert len(jobs) == 3


async def test_stop_cancels_concurrently_and_records_real_end_states(
    vertex_server: FakeVertex, sweep: Sweep, cloud_session: OpenSession
) -> None:
    n = 12
    async with cloud_session() as s:
        jobs = await sweep(s, n)
        names = [_remote(vertex_server, j) for j in jobs]
        vertex_server.advance(names[0], "JOB_STATE_SUCCEEDED")  # finished, not yet refreshed
        vertex_server.fail(names[1], 13, "exit status 1")
        vertex_server.advance(names[2], "JOB_STATE_RUNNING")
        vertex_server.cancel_latency = 0.25
        stopped = await s.stop(xgroup="life")
    assert vertex_server.cancel_calls == n
    # Side by side, not in a row: several cancels were held by the server at once.
    assert vertex_server.peak_inflight["cancel"] >= 3
    states = {j.job_id: j for j in stopped}
    assert states[jobs[0].job_id].state is JobState.SUCCEEDED
    assert states[jobs[1].job_id].state is JobState.FAILED
    assert states[jobs[1].job_id].message == "exit status 1"
    for job in jobs[2:]:
        # Accepted, not yet done: Vertex ends the job in its own time.
        assert states[job.job_id].state is JobState.CANCELLING
        assert vertex_server.job(_remote(vertex_server, job)).state == "JOB_STATE_CANCELLED"
    async with cloud_session() as s:
        fresh = {j.job_id: j for j in await s.status(xgroup="life", max_jobs=0)}
    assert all(fresh[j.job_id].state is JobState.STOPPED for j in jobs[2:])


@pytest.mark.parametrize(
    ("outcome", "recorded"),
    [
        ("JOB_STATE_CANCELLED", JobState.STOPPED),
        ("JOB_STATE_SUCCEEDED", JobState.SUCCEEDED),
        ("JOB_STATE_FAILED", JobState.FAILED),
    ],
)
async def test_a_cancelled_job_is_followed_until_vertex_says_how_it_ended(
    vertex_server: FakeVertex,
    sweep: Sweep,
    cloud_session: OpenSession,
    outcome: str,
    recorded: JobState,
) -> None:
    """Vertex answers :cancel at once and cancels later; a job may even finish meanwhile.
    caliban records CANCELLING, keeps refreshing it, and records what really happened."""
    now = [0.0]
    vertex_server.clock = lambda: now[0]
    vertex_server.cancel_delay = 30
    vertex_server.cancel_outcome = outcome
    async with cloud_session() as s:
        (job,) = await sweep(s, 1)
        vertex_server.advance(_remote(vertex_server, job), "JOB_STATE_RUNNING")
        (stopped,) = await s.stop(xgroup="life")
        assert stopped.state is JobState.CANCELLING
        assert stopped.state.active and not stopped.state.terminal
        now[0] = 10.0  # still cancelling on Vertex
        (still,) = await s.status(xgroup="life")
        assert still.state is JobState.CANCELLING
        now[0] = 31.0
        before = vertex_server.list_calls
        (ended,) = await s.status(xgroup="life")
        assert vertex_server.list_calls == before + 1
        assert ended.state is recorded
        assert vertex_server.job(_remote(vertex_server, job)).state == outcome
        # Once it ended, it is not asked about again.
        before = vertex_server.list_calls
        (again,) = await s.status(xgroup="life")
        assert vertex_server.list_calls == before and again.state is recorded


async def test_stop_finds_a_job_whose_create_was_cut_short(
    vertex_server: FakeVertex,
    vertex_request: VertexRequest,
    cloud_session: OpenSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job left PLANNED (its answer was lost and no lookup worked) may be running all the
    same: stop looks it up and cancels it instead of calling it "never submitted"."""
    monkeypatch.setattr(cloud_run, "RETRY_POLICY", RetryPolicy(attempts=2, initial=0.01))
    vertex_server.lose_next_creates(1)
    vertex_server.fail_next("list", 1000, 503)
    async with cloud_session() as s:
        result = await s.cloud(vertex_request(xgroup="cut"))
        assert [j.state for j in result.jobs] == [JobState.PLANNED]
        vertex_server._scripted.clear()
        (stopped,) = await s.stop(xgroup="cut")
    (remote,) = vertex_server.jobs
    assert stopped.state is JobState.CANCELLING and stopped.platform_id == remote.name
    assert remote.state == "JOB_STATE_CANCELLED"


async def test_stop_of_a_job_deleted_on_the_platform(
    vertex_server: FakeVertex, sweep: Sweep, cloud_session: OpenSession
) -> None:
    async with cloud_session() as s:
        (job,) = await sweep(s, 1)
        vertex_server.job(_remote(vertex_server, job)).deleted = True
        (stopped,) = await s.stop(xgroup="life")
    assert stopped.state is JobState.STOPPED
    assert stopped.message == "no longer exists on Vertex AI"


async def test_resubmit_sends_failed_and_stopped_jobs_again_with_their_recorded_body(
    vertex_server: FakeVertex, sweep: Sweep, cloud_session: OpenSession
) -> None:
    async with cloud_session() as s:
        jobs = await sweep(
            s,
            4,
            regions=("us-central1", "europe-west4"),
            spot=True,
        )
        names = [_remote(vertex_server, j) for j in jobs]
        vertex_server.fail(names[0])
        vertex_server.advance(names[1], "JOB_STATE_CANCELLED")
        vertex_server.advance(names[2], "JOB_STATE_SUCCEEDED")
        result = await s.resubmit(xgroup="life")
        assert len(result.jobs) == 2 and result.ok
        old = {j.index: j for j in jobs}
        for new in result.jobs:
            before = old[new.index]
            assert new.job_id != before.job_id
            assert new.state is JobState.SUBMITTED
            assert new.details["region"] == before.details["region"]
            (remote,) = vertex_server.jobs_with_label(JOB_LABEL, new.job_id)
            assert remote.location == before.details["region"]
            sent, recorded = remote.body, before.spec
            assert sent["labels"] == {**recorded["labels"], JOB_LABEL: new.job_id}  # type: ignore[dict-item]
            pool = sent["jobSpec"]["workerPoolSpecs"][0]
            env = {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}
            assert env["CALIBAN_JOB_ID"] == new.job_id
            assert sent["jobSpec"]["scheduling"] == {"strategy": "SPOT"}
            assert pool["containerSpec"]["args"] == list(before.args)
        assert sorted(j.index for j in result.jobs) == [0, 1]
        # The latest job of each experiment; running ones are left alone.
        latest = sorted(await s.status(xgroup="life"), key=lambda j: j.index)
        assert [j.state for j in latest] == [
            JobState.SUBMITTED,
            JobState.SUBMITTED,
            JobState.SUCCEEDED,
            JobState.SUBMITTED,
        ]
        assert len(vertex_server.jobs) == 6
        everything = await s.resubmit(xgroup="life", all_jobs=True)
        assert [j.index for j in everything.jobs] == [2]  # the only finished one now
        assert len(vertex_server.jobs) == 7
        assert vertex_server.duplicates(JOB_LABEL) == {}


async def test_resubmit_after_an_interrupted_submission_sends_only_the_missing(
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    cloud_session: OpenSession,
) -> None:
    """Cancel a fan-out half way (what Ctrl-C does); resubmit then creates exactly the jobs
    that are missing, adopting those the server already has, with one list per region."""
    import anyio

    n = 40
    vertex_server.create_latency = 0.05
    folder = make_project()
    async with cloud_session() as s:
        with anyio.move_on_after(0.5):
            await _sweep(
                s,
                folder,
                service_account_file,
                vertex_server,
                n,
                max_inflight=4,
                regions=("us-central1", "europe-west4"),
            )
        await anyio.sleep(0.1)  # creates the server was still working on land
        created = len(vertex_server.jobs)
        assert 0 < created < n
        before = vertex_server.list_calls
        result = await s.resubmit(xgroup="life")
        # Per region: one list to refresh, one to settle the PLANNED jobs; none per job.
        assert vertex_server.list_calls - before == 2 * 2
        jobs = await s.status(xgroup="life", max_jobs=0, refresh=False)
    assert {j.state for j in jobs} == {JobState.SUBMITTED}
    assert_exactly_once(vertex_server, jobs, n)
    assert len(result.jobs) == n - created  # created ones were adopted by the refresh
