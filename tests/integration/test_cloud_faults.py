"""No duplicate and no lost job under every fault the local Vertex server can inject, alone and
together: 5xx, dropped connections, responses lost after the job was created (three ways),
slow creates that time out, failing lookups, and quota 429s with and without Retry-After."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from caliban.events import Event, JobStateChanged, RetryScheduled
from caliban.limits import RetryPolicy
from caliban.platforms.vertex import plan as cloud_run
from caliban.session import Session
from caliban.spec import JobState
from tests.conftest import MakeProject
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import assert_exactly_once, cloud_request

N = 40


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production policy, with backoff in tens of milliseconds instead of seconds."""
    monkeypatch.setattr(
        cloud_run, "RETRY_POLICY", RetryPolicy(attempts=8, initial=0.02, max_delay=0.5)
    )


async def _submit(
    tmp_path: Path,
    folder: Path,
    key: Path,
    vertex: FakeVertex,
    env: dict[str, str],
    n: int = N,
    events: list[Event] | None = None,
    **kw: object,
) -> list[Any]:
    sink = events.append if events is not None else (lambda e: None)
    async with Session(home=tmp_path / "home", environ=env, sink=sink) as s:
        result = await s.cloud(
            cloud_request(folder, key, vertex, experiments={"i": list(range(n))}, **kw)
        )
        return list(result.jobs)


Submit = Callable[..., Awaitable[list[Any]]]


@pytest.fixture
def submit(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    session_env: dict[str, str],
) -> Submit:
    """``_submit`` of a new project (or ``folder``) with the key, the fake and the private home."""

    async def run(folder: Path | None = None, **kw: Any) -> list[Any]:
        project = folder if folder is not None else make_project()
        return await _submit(
            tmp_path, project, service_account_file, vertex_server, session_env, **kw
        )

    return run


FAULTS: dict[str, dict[str, object]] = {
    "5xx": {"error_rate_5xx": 0.3},
    "dropped-close": {"drop_rate": 0.25},
    "dropped-reset": {"drop_rate": 0.25, "drop_style": "reset"},
    "lost-close": {"lost_response_rate": 0.25},
    "lost-reset": {"lost_response_rate": 0.25, "lost_style": "reset"},
    "lost-partial": {"lost_response_rate": 0.25, "lost_style": "partial"},
    "latency": {"create_latency": 0.05, "list_latency": 0.05},
    "combined": {
        "error_rate_5xx": 0.15,
        "drop_rate": 0.1,
        "lost_response_rate": 0.15,
        "lost_style": "partial",
        "create_latency": 0.01,
    },
}


@pytest.mark.parametrize("knobs", FAULTS.values(), ids=FAULTS.keys())
async def test_every_fault_gives_every_job_exactly_once(
    vertex_server: FakeVertex, submit: Submit, knobs: dict[str, object]
) -> None:
    for name, value in knobs.items():
        setattr(vertex_server, name, value)
    events: list[Event] = []
    jobs = await submit(events=events)
    assert all(j.state is JobState.SUBMITTED for j in jobs), [
        (j.state, j.message) for j in jobs if j.state is not JobState.SUBMITTED
    ]
    assert_exactly_once(vertex_server, jobs, N)
    counters = vertex_server.counters()
    # The fault really happened, and was handled the way it should be.
    if "error_rate_5xx" in knobs:
        assert counters["rejected_5xx"] > 0
    if "drop_rate" in knobs:
        assert counters["dropped"] > 0
    if "lost_response_rate" in knobs:
        assert counters["lost_responses"] > 0
        # A lost response is never answered by sending again blindly: it is looked up.
        assert counters["list_calls"] >= counters["lost_responses"]
    faults = counters["rejected_5xx"] + counters["dropped"] + counters["lost_responses"]
    retries = [e for e in events if isinstance(e, RetryScheduled)]
    assert len(retries) == faults
    accepted = [e for e in events if isinstance(e, JobStateChanged)]
    assert len(accepted) == N and {e.state for e in accepted} == {JobState.SUBMITTED}


async def test_a_create_that_times_out_is_looked_up_not_resent(
    vertex_server: FakeVertex, submit: Submit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every create takes longer than the client waits; the server finishes it after the
    client gave up. The lookup waits as long again before looking (and once more if the
    job is not there yet), finds each job by its label, and nothing is sent twice."""
    monkeypatch.setattr(cloud_run, "REQUEST_TIMEOUT", 0.2)
    vertex_server.create_latency = 0.25
    jobs = await submit(n=8)
    assert all(j.state is JobState.SUBMITTED for j in jobs)
    assert_exactly_once(vertex_server, jobs, 8)
    assert vertex_server.counters()["creates_received"] == 8


async def test_lost_responses_whose_lookups_fail_too(
    vertex_server: FakeVertex, submit: Submit
) -> None:
    vertex_server.lose_next_creates(5)
    vertex_server.fail_next("list", 6, 503)
    jobs = await submit(n=10)
    assert all(j.state is JobState.SUBMITTED for j in jobs)
    assert_exactly_once(vertex_server, jobs, 10)
    assert vertex_server.counters()["creates_received"] == 10


async def test_an_outcome_that_stays_unknown_is_settled_later_never_resent(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    session_env: dict[str, str],
) -> None:
    """The response is lost and every lookup fails: the job stays PLANNED (reported UNKNOWN),
    neither FAILED nor sent again. `status` later finds it; a re-run sends nothing."""
    folder = make_project()
    vertex_server.lose_next_creates(1)
    vertex_server.fail_next("list", 1000, 503)
    events: list[Event] = []
    jobs = await _submit(
        tmp_path,
        folder,
        service_account_file,
        vertex_server,
        session_env,
        n=1,
        events=events,
        xgroup="unsure",
    )
    assert [j.state for j in jobs] == [JobState.PLANNED]
    assert [e.state for e in events if isinstance(e, JobStateChanged)] == [JobState.UNKNOWN]
    assert len(vertex_server.jobs) == 1
    vertex_server._scripted.clear()  # the listing works again
    async with Session(home=tmp_path / "home", environ=session_env) as s:
        (found,) = await s.status(xgroup="unsure")
        assert found.state is JobState.SUBMITTED
        assert found.platform_id == vertex_server.jobs[0].name
        again = await s.cloud(
            cloud_request(
                folder, service_account_file, vertex_server, experiments={"i": [0]}, xgroup="unsure"
            )
        )
    assert again.skipped == 1
    assert_exactly_once(vertex_server, [found], 1)


@pytest.mark.parametrize(
    "hint", ["retry-after", "retry-info", "none"], ids=["Retry-After", "RetryInfo", "no-hint"]
)
async def test_a_429_storm_pauses_the_bucket(
    vertex_server: FakeVertex, submit: Submit, hint: str
) -> None:
    """The user claims a quota 100x what the server allows (10 creates per second): the
    server's 429s pause the whole bucket, so the 429s stay near one per request in flight
    per window, and every job is created once."""
    quota, window, inflight, n = 10, 1.0, 4, 30
    vertex_server.quota_per_minute = quota
    vertex_server.quota_window = window
    vertex_server.retry_after_header = hint == "retry-after"
    vertex_server.retry_info_detail = hint == "retry-info"
    events: list[Event] = []
    jobs = await submit(
        n=n,
        events=events,
        max_inflight=inflight,
        rate_limit=60 * 1000,
    )
    assert all(j.state is JobState.SUBMITTED for j in jobs)
    assert_exactly_once(vertex_server, jobs, n)
    got_429 = vertex_server.counters()["rejected_429"]
    assert got_429 > 0
    windows = math.ceil(n / quota)
    if hint == "none":
        # Without a hint each job backs off on its own (full jitter, exponential).
        assert got_429 < 10 * windows * inflight
    else:
        assert got_429 <= (windows + 1) * inflight
        delays = [e.delay for e in events if isinstance(e, RetryScheduled)]
        assert delays and min(delays) > 0.0


async def test_quota_429s_spread_over_regions_stay_within_each_region(
    vertex_server: FakeVertex, submit: Submit
) -> None:
    """Two regions, each with its own quota and its own bucket at that quota: no 429 at all,
    and each region takes its share."""
    vertex_server.quota_per_minute = 600  # per (project, region)
    jobs = await submit(
        n=24,
        regions=("us-central1", "europe-west4"),
        rate_limit=600,
    )
    assert_exactly_once(vertex_server, jobs, 24)
    assert vertex_server.counters()["rejected_429"] == 0
    per_region = {
        r: sum(j.location == r for j in vertex_server.jobs) for r in ("us-central1", "europe-west4")
    }
    assert per_region == {"us-central1": 12, "europe-west4": 12}


async def test_permanent_errors_fail_the_job_without_retrying(
    vertex_server: FakeVertex, submit: Submit
) -> None:
    vertex_server.fail_next_creates(1, 400)
    jobs = await submit(
        n=3,
        max_inflight=1,
    )
    assert [j.state for j in jobs] == [JobState.FAILED, JobState.SUBMITTED, JobState.SUBMITTED]
    assert "Injected failure" in str(jobs[0].message)
    assert vertex_server.counters()["creates_received"] == 3


async def test_retries_are_capped(vertex_server: FakeVertex, submit: Submit) -> None:
    vertex_server.fail_next_creates(100, 503)
    jobs = await submit(n=1)
    assert [j.state for j in jobs] == [JobState.FAILED]
    assert "Injected failure" in str(jobs[0].message) and "UNAVAILABLE" in str(jobs[0].message)
    assert vertex_server.counters()["creates_received"] == cloud_run.RETRY_POLICY.attempts
    assert vertex_server.jobs == []
