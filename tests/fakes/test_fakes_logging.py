"""The Cloud Logging stand-in on the wire: discovery checks, filters, order, paging, faults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from .cloudlogging import FakeLogging, nanos, parse_filter, stamp_of

HEADERS = {"Authorization": "Bearer t"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeLogging]:
    async with FakeLogging() as server:
        server.add("11", "a1", "a2", "a3", project="p")
        server.add("22", "b1", project="p")
        server.add("33", "c1", project="other")
        yield server


async def _list(fake: FakeLogging, body: Any, headers: dict[str, str] = HEADERS) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fake.url}/v2/entries:list", json=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.json()


def _texts(page: Any) -> list[str]:
    return [e["textPayload"] for e in page.get("entries", [])]


async def test_bodies_are_checked_against_the_discovery_document(fake: FakeLogging) -> None:
    status, _, page = await _list(fake, {"filter": 'resource.type="ml_job"'})
    assert status == 400
    assert "resource_names" in page["error"]["message"]
    status, _, page = await _list(fake, {"resourceNames": ["projects/p"], "pageSize": "ten"})
    assert status == 400 and "TYPE_INT32" in page["error"]["message"]
    status, _, page = await _list(fake, {"resourceNames": ["projects/p"], "jobId": "11"})
    assert status == 400 and 'Unknown name "jobId"' in page["error"]["message"]


async def test_one_or_filter_for_many_jobs_in_the_named_projects_only(fake: FakeLogging) -> None:
    body = {
        "resourceNames": ["projects/p"],
        "filter": 'resource.type="ml_job" AND resource.labels.job_id=("11" OR "22" OR "33")',
    }
    status, _, page = await _list(fake, body)
    assert status == 200
    assert _texts(page) == ["a1", "a2", "a3", "b1"]
    entry = page["entries"][0]
    assert entry["resource"] == {
        "type": "ml_job",
        "labels": {"job_id": "11", "project_id": "p", "task_name": "workerpool0-0"},
    }
    status, _, page = await _list(fake, {**body, "orderBy": "timestamp desc"})
    assert _texts(page) == ["b1", "a3", "a2", "a1"]


async def test_timestamps_and_unsupported_filters(fake: FakeLogging) -> None:
    second = fake.entries("11")[1]
    body = {
        "resourceNames": ["projects/p"],
        "filter": f'resource.labels.job_id="11" AND timestamp>"{stamp_of(second.at)}"',
    }
    assert _texts((await _list(fake, body))[2]) == ["a3"]
    body["filter"] = "severity>=ERROR"
    status, _, page = await _list(fake, body)
    assert status == 400 and "unsupported filter clause" in page["error"]["message"]
    body["filter"] = 'resource.type="k8s_container"'
    assert (await _list(fake, body))[0] == 400


async def test_pages_are_bound_to_their_request(fake: FakeLogging) -> None:
    fake.max_page_size = 2
    body = {"resourceNames": ["projects/p"], "filter": 'resource.labels.job_id="11"'}
    _, _, first = await _list(fake, body)
    assert _texts(first) == ["a1", "a2"]
    _, _, second = await _list(fake, {**body, "pageToken": first["nextPageToken"]})
    assert _texts(second) == ["a3"] and "nextPageToken" not in second
    other = {**body, "filter": 'resource.labels.job_id="22"', "pageToken": first["nextPageToken"]}
    status, _, page = await _list(fake, other)
    assert status == 400 and "does not match" in page["error"]["message"]


async def test_faults_429_with_retry_after_403_and_401(fake: FakeLogging) -> None:
    body = {"resourceNames": ["projects/p"]}
    fake.fail_next(1, 429, retry_after=2)
    status, headers, page = await _list(fake, body)
    assert (status, headers["Retry-After"], page["error"]["status"]) == (
        429,
        "2",
        "RESOURCE_EXHAUSTED",
    )
    assert (await _list(fake, body))[0] == 200
    fake.deny("p")
    status, _, page = await _list(fake, body)
    assert status == 403 and "logging.logEntries.list" in page["error"]["message"]
    assert (await _list(fake, {"resourceNames": ["projects/other"]}))[0] == 200
    assert (await _list(fake, body, headers={}))[0] == 401
    assert [c.status for c in fake.calls] == [429, 200, 403, 200, 401]


def test_filter_parsing_and_timestamps() -> None:
    q = parse_filter('resource.type="ml_job" AND resource.labels.job_id=("1" OR "2")')
    assert q.job_ids == {"1", "2"}
    assert nanos("2026-01-01T00:00:00.5Z") == nanos("2026-01-01T00:00:00Z") + 500_000_000
    assert stamp_of(nanos("2026-01-01T00:00:00.000000123Z")) == "2026-01-01T00:00:00.000000123Z"
