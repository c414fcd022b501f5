"""The fake Vertex AI CustomJob API: wire format, validation, list filters, paging, cancel.

Driven with raw aiohttp (tests/fakes/rest.py) so every assertion is about what is on the wire.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from .rest import VertexRest, job_body
from .vertex import FakeVertex
from .vertex_jobs import Lifecycle

NAME = re.compile(r"^projects/123456789012/locations/us-central1/customJobs/\d{19}$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def vertex(clock: FakeClock) -> AsyncIterator[FakeVertex]:
    async with FakeVertex(clock=clock) as server:
        yield server


@pytest.fixture
def rest(vertex: FakeVertex, http_session: aiohttp.ClientSession) -> VertexRest:
    return VertexRest(http_session, vertex.url)


async def test_create_returns_the_server_view(rest: VertexRest, vertex: FakeVertex) -> None:
    reply = await rest.create(job_body("exp-1", caliban_job="j1"))
    assert reply.status == 200, reply.body
    job = reply.body
    assert NAME.match(job["name"])  # project NUMBER, whatever id the URL used
    assert job["state"] == "JOB_STATE_QUEUED"
    assert RFC3339.match(job["createTime"]) and RFC3339.match(job["updateTime"])
    pool = job["jobSpec"]["workerPoolSpecs"][0]
    assert pool["replicaCount"] == "1"  # int64 -> string, although the request sent 1
    assert pool["machineSpec"]["acceleratorCount"] == 1  # int32 stays a number
    assert pool["diskSpec"] == {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100}
    assert job["jobSpec"]["scheduling"] == {"timeout": "86400s", "strategy": "STANDARD"}
    assert job["labels"] == {"caliban_job": "j1"}
    assert "startTime" not in job and "error" not in job
    # get by the returned name, and by the project-id form of it
    assert (await rest.get(job["name"])).body == job
    by_id = job["name"].replace("123456789012", "test-proj")
    assert (await rest.get(by_id)).body == job
    assert vertex.jobs[0].body["jobSpec"]["workerPoolSpecs"][0]["replicaCount"] == 1
    assert vertex.counters()["creates_accepted"] == 1


async def test_proto3_json_normalisation(rest: VertexRest) -> None:
    body = job_body()
    pool = body["jobSpec"]["workerPoolSpecs"][0]
    pool["replica_count"] = pool.pop("replicaCount")  # proto field names are accepted too
    pool["replica_count"] = "1"
    body["jobSpec"]["enableWebAccess"] = False  # defaults are left out of responses
    body["jobSpec"]["scheduling"]["timeout"] = "3600.000s"
    job = (await rest.create(body)).body
    assert job["jobSpec"]["workerPoolSpecs"][0]["replicaCount"] == "1"
    assert "enableWebAccess" not in job["jobSpec"]
    assert job["jobSpec"]["scheduling"]["timeout"] == "3600s"
    assert job["state"] == "JOB_STATE_QUEUED"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A body mutation: set (or with value ... delete) the dotted path; [0] indexes lists."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return mutate


POOL = "jobSpec.workerPoolSpecs.0"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("bogus", 1), "Unknown name \"bogus\" at 'custom_job': Cannot find field."),
        (_set("state", "JOB_STATE_SUCCEEDED"), "custom_job.state; Message: Output only"),
        (_set("createTime", "2026-01-01T00:00:00Z"), "custom_job.create_time; Message: Output"),
        (
            _set(f"{POOL}.machineSpec.gpus", 2),
            "Unknown name \"gpus\" at 'custom_job.job_spec.worker_pool_specs[0].machine_spec'",
        ),
        (_set(f"{POOL}.replicaCount", "one"), '(TYPE_INT64), "one"'),
        (_set(f"{POOL}.machineSpec.acceleratorType", "NVIDIA_GTX_1080"), "AcceleratorType"),
        (_set("jobSpec.scheduling.strategy", "CHEAP"), "Scheduling.Strategy"),
        (_set("jobSpec.scheduling.strategy", "ON_DEMAND"), "deprecated"),
        (_set("jobSpec.scheduling.timeout", "1h"), "google.protobuf.Duration"),
        (_set("displayName", ...), "Field: custom_job.display_name; Message: Required"),
        (_set("jobSpec.workerPoolSpecs", []), "custom_job.job_spec.worker_pool_specs; Message"),
        (_set(f"{POOL}.containerSpec.imageUri", ""), "container_spec.image_uri; Message: Req"),
        (_set(f"{POOL}.machineSpec.machineType", ...), "machine_spec.machine_type; Message"),
        (_set(f"{POOL}.replicaCount", 2), "exactly 1 replica"),
        (_set(f"{POOL}.machineSpec.machineType", "a2-highgpu-1g"), "is not supported for"),
        (_set(f"{POOL}.machineSpec", {"machineType": "ct6e-standard-4t"}), "tpu_topology"),
        (_set("labels", {"Caps": "x"}), 'Label key "Caps" is invalid'),
        (_set("labels", {"ok": "Has Space"}), 'Label value "Has Space" is invalid'),
        (_set("labels", {"k": "v" * 64}), "is invalid"),
        (_set("labels", {f"k{i}": "v" for i in range(65)}), "At most 64 labels"),
        (_set("labels", {"k": 5}), "(TYPE_STRING), 5"),
    ],
)
async def test_create_validation(
    rest: VertexRest,
    vertex: FakeVertex,
    mutate: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    body = job_body()
    mutate(body)
    reply = await rest.create(body)
    assert reply.status == 400, reply.body
    assert reply.error["status"] == "INVALID_ARGUMENT" and reply.error["code"] == 400
    assert expected in reply.error["message"]
    assert reply.error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert vertex.jobs == [] and vertex.rejected_invalid == 1


async def test_labels_at_the_limits_are_accepted(rest: VertexRest) -> None:
    labels = {f"k{i}": "" for i in range(63)} | {"a" + "b" * 62: "v" * 63}
    body = job_body()
    body["labels"] = labels
    assert (await rest.create(body)).status == 200


async def test_malformed_json(rest: VertexRest, http_session: aiohttp.ClientSession) -> None:
    url = f"{rest.base_url}/v1/{rest.parent}/customJobs"
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    async with http_session.post(url, data=b"{nope", headers=headers) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["error"]["message"].startswith("Invalid JSON payload")


async def _create_many(rest: VertexRest, *specs: tuple[str, dict[str, str]]) -> list[str]:
    names = []
    for display_name, labels in specs:
        reply = await rest.create(job_body(display_name, **labels))
        assert reply.status == 200, reply.body
        names.append(reply.body["name"])
    return names


async def test_list_filters(rest: VertexRest, vertex: FakeVertex) -> None:
    a, b, c = await _create_many(
        rest,
        ("exp_1", {"run": "r1", "job": "a"}),
        ("exp_2", {"run": "r1", "job": "b"}),
        ("other", {"run": "r2", "job": "c"}),
    )
    vertex.advance(b, "JOB_STATE_RUNNING")

    async def names(text: str) -> set[str]:
        return {job["name"] for job in await rest.list_all(text)}

    assert await names("") == {a, b, c}
    assert await names("labels.run=r1") == {a, b}
    assert await names('labels.run = "r2"') == {c}
    assert await names("labels.job:*") == {a, b, c}
    assert await names("labels:nope") == set()
    assert await names('state="JOB_STATE_RUNNING"') == {b}
    assert await names("state=JOB_STATE_QUEUED") == {a, c}
    assert await names('display_name="other"') == {c}
    assert await names('display_name:"exp_*"') == {a, b}
    assert await names("labels.run=r1 AND state=JOB_STATE_QUEUED") == {a}
    assert await names("labels.run=r1 state=JOB_STATE_QUEUED") == {a}  # implicit AND
    assert await names("labels.job=a OR labels.job=c") == {a, c}
    assert await names("NOT labels.run=r1") == {c}
    assert await names("-labels.run=r1") == {c}
    # AIP-160: OR binds tighter than AND.
    assert await names("labels.run=r1 AND labels.job=b OR labels.job=c") == {b}
    assert await names("(labels.run=r1 AND labels.job=b) OR labels.job=c") == {b, c}
    created = vertex.job(a).to_json()["createTime"]
    assert await names(f'create_time>="{created}"') == {a, b, c}
    assert await names(f'create_time<"{created}"') == set()


@pytest.mark.parametrize(
    "text", ["labels.run=", "state=RUNNING", "bogus=1", "labels.x=1 AND", "(labels.x=1", "a and b"]
)
async def test_bad_filters_are_invalid_argument(rest: VertexRest, text: str) -> None:
    reply = await rest.list_jobs(filter=text)
    assert reply.status == 400 and reply.error["status"] == "INVALID_ARGUMENT", reply.body


async def test_empty_list_is_an_empty_object(rest: VertexRest) -> None:
    reply = await rest.list_jobs()
    assert (reply.status, reply.body) == (200, {})  # proto3 JSON omits the empty list


async def test_pagination(rest: VertexRest, vertex: FakeVertex) -> None:
    names = await _create_many(rest, *[(f"e{i}", {"run": "r"}) for i in range(7)])
    first = await rest.list_jobs(pageSize="3", filter="labels.run=r")
    assert [j["name"] for j in first.body["customJobs"]] == names[::-1][:3]  # newest first
    # A job created mid-way does not shift the pages after it.
    await rest.create(job_body("late", run="r"))
    second = await rest.list_jobs(
        pageSize="3", filter="labels.run=r", pageToken=first.body["nextPageToken"]
    )
    third = await rest.list_jobs(
        pageSize="3", filter="labels.run=r", pageToken=second.body["nextPageToken"]
    )
    assert "nextPageToken" not in third.body
    pages = [first, second, third]
    seen = [j["name"] for page in pages for j in page.body["customJobs"]]
    assert seen == names[::-1]
    # The token is bound to the filter; bad sizes and unknown parameters are refused.
    reused = await rest.list_jobs(filter="labels.run=x", pageToken=first.body["nextPageToken"])
    assert reused.status == 400
    assert (await rest.list_jobs(pageToken="garbage")).status == 400
    assert (await rest.list_jobs(pageSize="-1")).status == 400
    assert (await rest.list_jobs(pageSize="ten")).status == 400
    assert (await rest.list_jobs(page_length="1")).status == 400
    vertex.max_page_size = 2
    assert len((await rest.list_jobs(pageSize="500")).body["customJobs"]) == 2
    assert vertex.list_calls == 9


async def test_cancel(rest: VertexRest, vertex: FakeVertex, clock: FakeClock) -> None:
    first, second = await _create_many(rest, ("a", {"j": "1"}), ("b", {"j": "2"}))
    reply = await rest.cancel(first)
    assert (reply.status, reply.body) == (200, {})
    job = (await rest.get(first)).body
    assert job["state"] == "JOB_STATE_CANCELLED"
    assert job["error"] == {"code": 1, "message": "CANCELED"}  # proto Status: number, no name
    assert RFC3339.match(job["endTime"])
    again = await rest.cancel(first)
    assert again.status == 400 and again.error["status"] == "FAILED_PRECONDITION"
    # With a cancel delay the job is seen CANCELLING first.
    vertex.cancel_delay = 5
    assert (await rest.cancel(second, {})).status == 200
    assert (await rest.get(second)).body["state"] == "JOB_STATE_CANCELLING"
    assert (await rest.cancel(second)).status == 200  # cancelling again is fine
    clock.now += 5
    assert (await rest.get(second)).body["state"] == "JOB_STATE_CANCELLED"
    assert vertex.job(second).history == [
        "JOB_STATE_QUEUED",
        "JOB_STATE_CANCELLING",
        "JOB_STATE_CANCELLED",
    ]
    assert vertex.cancel_calls == 4


async def test_cancel_route_and_not_found(rest: VertexRest) -> None:
    (name,) = await _create_many(rest, ("a", {"j": "1"}))
    missing = name.rsplit("/", 1)[0] + "/42"
    reply = await rest.cancel(missing)  # routed to cancel, not swallowed by get
    assert reply.status == 404 and reply.error["status"] == "NOT_FOUND"
    assert (await rest.get(missing)).status == 404
    assert (await rest.call("GET", f"{name}:cancel")).status == 405
    bad_body = await rest.cancel(name, {"force": True})
    assert bad_body.status == 400 and 'Unknown name "force"' in bad_body.error["message"]
    other_location = name.replace("us-central1", "europe-west4")
    assert (await rest.get(other_location)).status == 404


async def test_delete(rest: VertexRest, vertex: FakeVertex) -> None:
    (name,) = await _create_many(rest, ("a", {"j": "1"}))
    refused = await rest.delete(name)
    assert refused.status == 400 and refused.error["status"] == "FAILED_PRECONDITION"
    vertex.advance(name, "JOB_STATE_SUCCEEDED")
    operation = (await rest.delete(name)).body
    assert operation["done"] is True and "/operations/" in operation["name"]
    assert (await rest.get(name)).status == 404
    assert vertex.job(name).deleted  # still in the history for assertions


async def test_manual_lifecycle_and_fail(rest: VertexRest, vertex: FakeVertex) -> None:
    a, b = await _create_many(rest, ("a", {"j": "1"}), ("b", {"j": "2"}))
    moved = vertex.advance(to="JOB_STATE_RUNNING")
    assert {j.name for j in moved} == {a, b}
    job = (await rest.get(a)).body
    assert job["state"] == "JOB_STATE_RUNNING" and RFC3339.match(job["startTime"])
    vertex.fail(b, code=8, message="quota exceeded for nvidia_t4_gpus")
    failed = (await rest.get(b)).body
    assert failed["state"] == "JOB_STATE_FAILED"
    assert failed["error"] == {"code": 8, "message": "quota exceeded for nvidia_t4_gpus"}
    vertex.advance(a, "JOB_STATE_SUCCEEDED")
    assert (await rest.get(a)).body["state"] == "JOB_STATE_SUCCEEDED"
    assert vertex.advance(to="JOB_STATE_RUNNING") == []  # nothing live is left
    with pytest.raises(ValueError):
        vertex.advance(a, "RUNNING")


async def test_automatic_lifecycle(rest: VertexRest, vertex: FakeVertex, clock: FakeClock) -> None:
    vertex.lifecycle = Lifecycle(queued=1, pending=2, running=3)
    (name,) = await _create_many(rest, ("a", {"j": "1"}))
    states = []
    for _ in range(7):
        states.append((await rest.get(name)).body["state"].removeprefix("JOB_STATE_"))
        clock.now += 1
    assert states == ["QUEUED", "PENDING", "PENDING", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"]
    job = (await rest.get(name)).body
    assert job["startTime"] < job["endTime"]
    vertex.lifecycle = Lifecycle(outcome="JOB_STATE_FAILED")
    (bad,) = await _create_many(rest, ("b", {"j": "2"}))
    failed = (await rest.list_jobs(filter="labels.j=2")).body["customJobs"][0]
    assert failed["name"] == bad and failed["state"] == "JOB_STATE_FAILED"
    assert failed["error"]["code"] == 13


async def test_projects_and_permissions(rest: VertexRest, vertex: FakeVertex) -> None:
    vertex.deny("123456789012", "aiplatform.customJobs.create")
    reply = await rest.create(job_body())
    assert reply.status == 403 and reply.error["status"] == "PERMISSION_DENIED"
    assert "aiplatform.customJobs.create" in reply.error["message"]
    assert reply.error["details"][0]["reason"] == "IAM_PERMISSION_DENIED"
    assert (await rest.list_jobs()).status == 200  # only create was denied
    vertex.allow("123456789012")
    assert (await rest.create(job_body())).status == 200
    vertex.deny("test-proj")
    assert (await rest.list_jobs()).status == 403
    assert vertex.permission_denied == 2


async def test_duplicates_and_label_lookup(rest: VertexRest, vertex: FakeVertex) -> None:
    await _create_many(rest, ("a", {"cj": "x"}), ("b", {"cj": "y"}), ("c", {"cj": "x"}))
    dups = vertex.duplicates("cj")
    assert list(dups) == ["x"] and [j.display_name for j in dups["x"]] == ["a", "c"]
    assert [j.display_name for j in vertex.jobs_with_label("cj", "y")] == ["b"]
    assert vertex.duplicates("absent") == {}
