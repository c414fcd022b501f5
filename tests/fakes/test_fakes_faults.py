"""Fault knobs of the fake Vertex API, and exactly what an aiohttp client sees for each.

These facts are what the production retry/reconcile code is written against:

- quota: 429 RESOURCE_EXHAUSTED, ``Retry-After`` (whole seconds) and a RetryInfo detail;
- a dropped connection (nothing created): ``ServerDisconnectedError`` (FIN) or
  ``ClientOSError`` errno ECONNRESET (RST);
- a lost response (job created): the same two exceptions, or, when half the body arrived,
  a 200 whose body read raises ``ClientPayloadError``;
- a client timeout during a slow create: ``TimeoutError``, and the job is created anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from .rest import VertexRest, job_body
from .test_fakes_vertex import FakeClock
from .vertex import FakeVertex


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def vertex(clock: FakeClock) -> AsyncIterator[FakeVertex]:
    async with FakeVertex(clock=clock, seed=7) as server:
        yield server


@pytest.fixture
def rest(vertex: FakeVertex, http_session: aiohttp.ClientSession) -> VertexRest:
    return VertexRest(http_session, vertex.url)


async def test_quota_429_with_retry_after_and_retry_info(
    rest: VertexRest, vertex: FakeVertex, clock: FakeClock
) -> None:
    vertex.quota_per_minute = 2
    assert (await rest.create(job_body())).status == 200
    clock.now += 10
    assert (await rest.create(job_body())).status == 200
    clock.now += 10
    reply = await rest.create(job_body())
    assert reply.status == 429 and reply.error["status"] == "RESOURCE_EXHAUSTED"
    assert reply.error["code"] == 429 and "Quota exceeded" in reply.error["message"]
    assert reply.headers["Retry-After"] == "40"  # the oldest create leaves the window in 40 s
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in reply.error["details"]}
    assert details["RetryInfo"]["retryDelay"] == "40s"
    assert details["ErrorInfo"]["reason"] == "RATE_LIMIT_EXCEEDED"
    # Quota is per (project, location): another region still has room.
    rest.location = "europe-west4"
    assert (await rest.create(job_body())).status == 200
    rest.location = "us-central1"
    clock.now += 40.5
    assert (await rest.create(job_body())).status == 200
    assert vertex.rejected_429 == 1 and vertex.creates_accepted == 4
    assert [a.outcome for a in vertex.create_log] == [
        "accepted",
        "accepted",
        "429",
        "accepted",
        "accepted",
    ]


async def test_quota_hints_are_knobs(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.quota_per_minute = 1
    vertex.quota_window = 0.25  # sub-second windows keep quota tests fast
    assert (await rest.create(job_body())).status == 200
    vertex.retry_after_header = False
    reply = await rest.create(job_body())
    assert reply.status == 429 and "Retry-After" not in reply.headers
    delay = reply.error["details"][1]["retryDelay"]
    assert delay == "0.250s"
    vertex.retry_info_detail = False
    vertex.retry_after_header = True
    reply = await rest.create(job_body())
    assert reply.headers["Retry-After"] == "1"  # rounded up to whole seconds
    assert [d["@type"] for d in reply.error["details"]] == [
        "type.googleapis.com/google.rpc.ErrorInfo"
    ]


async def test_crud_quota(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.crud_quota_per_minute = 2
    assert (await rest.list_jobs()).status == 200
    assert (await rest.list_jobs()).status == 200
    reply = await rest.list_jobs()
    assert reply.status == 429 and "CRUD" in reply.error["message"]
    assert (await rest.create(job_body())).status == 200  # creates have their own quota


async def test_random_5xx(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.error_rate_5xx = 1.0
    reply = await rest.create(job_body())
    assert reply.status == 503
    assert reply.error == {
        "code": 503,
        "message": "The service is currently unavailable.",
        "status": "UNAVAILABLE",
    }
    assert vertex.jobs == [] and vertex.rejected_5xx == 1


async def test_scripted_failures(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.fail_next_creates(2, 503)
    vertex.fail_next_creates(1, 429)
    vertex.fail_next_creates(1, 429, retry_after=2)
    vertex.fail_next_creates(1, 409)
    statuses = [(await rest.create(job_body())).status for _ in range(6)]
    assert statuses == [503, 503, 429, 429, 409, 200]
    bare = vertex.create_log[2]
    assert bare.outcome == "429"
    vertex.fail_next_creates(1, 429)
    reply = await rest.create(job_body())
    assert "details" not in reply.error and "Retry-After" not in reply.headers
    vertex.fail_next_creates(1, 429, retry_after=2)
    reply = await rest.create(job_body())
    assert reply.headers["Retry-After"] == "2"
    assert reply.error["details"][-1]["retryDelay"] == "2s"
    vertex.fail_next("list", 1, 500)
    failed = await rest.list_jobs()
    assert failed.status == 500 and failed.error["status"] == "INTERNAL"
    assert len(vertex.jobs) == 1
    counters = vertex.counters()
    assert (counters["rejected_5xx"], counters["rejected_429"], counters["rejected_other"]) == (
        3,
        4,
        1,
    )


async def test_dropped_connection_close(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.drop_next_creates(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await rest.create(job_body())
    assert vertex.jobs == [] and vertex.dropped == 1
    vertex.drop_rate = 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await rest.create(job_body())
    assert vertex.jobs == [] and vertex.dropped == 2
    vertex.drop_rate = 0.0
    assert (await rest.create(job_body())).status == 200  # the session recovers


async def test_dropped_connection_reset(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.drop_style = "reset"
    vertex.drop_next_creates(1)
    with pytest.raises(aiohttp.ClientOSError) as caught:
        await rest.create(job_body())
    assert caught.value.errno == errno.ECONNRESET
    assert not isinstance(caught.value, aiohttp.ServerDisconnectedError)
    assert vertex.jobs == []


async def test_lost_response_close(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.lose_next_creates(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await rest.create(job_body(caliban_job="uuid-1"))
    # The client saw a failure, yet the job exists: it must reconcile by label.
    found = await rest.list_all("labels.caliban_job=uuid-1")
    assert len(found) == 1 and found[0]["name"] == vertex.jobs[0].name
    assert vertex.lost_responses == 1 and vertex.creates_accepted == 1
    assert vertex.create_log[0].outcome == "lost"


async def test_lost_response_reset(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.lost_style = "reset"
    vertex.lost_response_rate = 1.0
    with pytest.raises(aiohttp.ClientOSError) as caught:
        await rest.create(job_body())
    assert caught.value.errno == errno.ECONNRESET
    assert len(vertex.jobs) == 1


async def test_lost_response_partial_body(
    vertex: FakeVertex, http_session: aiohttp.ClientSession
) -> None:
    vertex.lost_style = "partial"
    vertex.lose_next_creates(1)
    url = f"{vertex.url}/v1/projects/p/locations/us-central1/customJobs"
    async with http_session.post(url, json=job_body(), headers={"Authorization": "Bearer t"}) as r:
        assert r.status == 200  # the status line and headers made it
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.json()
    assert len(vertex.jobs) == 1


async def test_slow_create_times_out_but_still_creates(
    rest: VertexRest, vertex: FakeVertex
) -> None:
    vertex.create_latency = 0.3
    with pytest.raises(TimeoutError):
        await rest.create(job_body(caliban_job="slow"), timeout=0.05)
    assert vertex.creates_received == 1 and vertex.jobs == []
    for _ in range(250):  # up to 5 s
        if vertex.jobs:
            break
        await asyncio.sleep(0.02)
    # aiohttp does not cancel a handler when its client goes away: the create completes.
    assert [j.labels["caliban_job"] for j in vertex.jobs] == ["slow"]


async def test_get_and_list_latency(rest: VertexRest, vertex: FakeVertex) -> None:
    name = (await rest.create(job_body())).body["name"]
    vertex.get_latency = vertex.list_latency = 0.1
    await asyncio.gather(rest.get(name), rest.list_jobs())
    # Each was delayed, and the two were delayed at the same time.
    assert vertex.peak_inflight == {"get": 1, "list": 1, "any": 2}


async def test_close_does_not_wait_for_sleeping_handlers(
    http_session: aiohttp.ClientSession,
) -> None:
    vertex = await FakeVertex().start()
    vertex.create_latency = 30
    rest = VertexRest(http_session, vertex.url)
    task = asyncio.create_task(rest.create(job_body()))
    for _ in range(500):
        if vertex.creates_received:
            break
        await asyncio.sleep(0.01)
    start = time.monotonic()
    await vertex.close()
    assert time.monotonic() - start < 5
    with pytest.raises(aiohttp.ClientError):
        await task


async def _outcomes(seed: int, http_session: aiohttp.ClientSession) -> list[str]:
    async with FakeVertex(seed=seed) as vertex:
        vertex.drop_rate = vertex.lost_response_rate = vertex.error_rate_5xx = 0.25
        rest = VertexRest(http_session, vertex.url)
        for _ in range(20):
            with contextlib.suppress(aiohttp.ClientError):
                await rest.create(job_body())
        return [attempt.outcome for attempt in vertex.create_log]


async def test_random_faults_are_reproducible(http_session: aiohttp.ClientSession) -> None:
    first = await _outcomes(3, http_session)
    assert first == await _outcomes(3, http_session)
    assert {"accepted", "dropped", "lost", "5xx"} <= set(first)
