"""The fake apiserver, driven by the real kubernetes_asyncio client.

These tests pin down both sides of the wire: what the fake answers, and how the unmodified
client library reacts (which exception, which field is None...), because production code is
written against that reaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from . import k8s_fixtures
from .k8s import AutoLifecycle, FakeKubernetes
from .k8s_fixtures import K8S_TOKEN, make_job
from .k8s_fixtures import batch_api as batch
from .k8s_fixtures import core_api as core
from .k8s_fixtures import error_body as body_of

# Fixtures, bound here so this module works whether or not a conftest imports them too.
fake_k8s = k8s_fixtures.fake_k8s
fake_k8s_tls = k8s_fixtures.fake_k8s_tls
k8s_api = k8s_fixtures.k8s_api

NS = "default"


async def names(api: ApiClient, **kwargs: Any) -> list[str]:
    result = await batch(api).list_namespaced_job(NS, **kwargs)
    return sorted(j.metadata.name for j in result.items)


# --- create / get / list ---------------------------------------------------------------------


async def test_create_get_list_with_models_and_dicts(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    model = client.V1Job(
        metadata=client.V1ObjectMeta(name="model-job", labels={"caliban/run": "r1"}),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"caliban/run": "r1"}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[client.V1Container(name="main", image="img:1")],
                ),
            ),
        ),
    )
    created = await batch(k8s_api).create_namespaced_job(NS, model)
    assert created.metadata.uid and created.metadata.resource_version.isdigit()
    assert created.metadata.creation_timestamp is not None
    assert created.kind == "Job" and created.api_version == "batch/v1"
    # The create response carries the object as stored, before the controller touched it.
    assert created.status.active is None and created.status.conditions is None
    assert created.spec.parallelism == 1 and created.spec.completions == 1
    assert created.spec.template.metadata.labels["job-name"] == "model-job"

    await batch(k8s_api).create_namespaced_job(NS, make_job("dict-job", labels={"x": "1"}))
    got = await batch(k8s_api).read_namespaced_job("model-job", NS)
    assert got.metadata.uid == created.metadata.uid
    # The controller already created a pod, so the stored Job is active and newer.
    assert got.status.active == 1 and got.status.start_time is not None
    assert int(got.metadata.resource_version) > int(created.metadata.resource_version)
    status = await batch(k8s_api).read_namespaced_job_status("model-job", NS)
    assert status.status.active == 1

    listed = await batch(k8s_api).list_namespaced_job(NS)
    assert listed.kind == "JobList" and listed.metadata.resource_version.isdigit()
    assert [j.metadata.name for j in listed.items] == ["dict-job", "model-job"]
    # Like a real apiserver, list items carry no kind/apiVersion.
    assert listed.items[0].kind is None
    assert fake_k8s.creates_received == fake_k8s.creates_accepted == 2
    assert fake_k8s.list_calls == 1

    pods = await core(k8s_api).list_namespaced_pod(NS, label_selector="job-name=model-job")
    [pod] = pods.items
    assert pod.metadata.name.startswith("model-job-") and len(pod.metadata.name) == 15
    assert pod.metadata.labels["caliban/run"] == "r1"
    assert pod.metadata.labels["controller-uid"] == created.metadata.uid
    assert pod.metadata.owner_references[0].kind == "Job"
    assert pod.status.phase == "Pending"


async def test_empty_list_still_has_items(k8s_api: ApiClient) -> None:
    listed = await batch(k8s_api).list_namespaced_job(NS, label_selector="nothing=here")
    assert listed.items == []
    cms = await core(k8s_api).list_namespaced_config_map(NS)
    assert cms.items == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("team=a", ["a1", "a2"]),
        ("team==a", ["a1", "a2"]),
        ("team!=a", ["b1", "none"]),
        ("team", ["a1", "a2", "b1"]),
        ("!team", ["none"]),
        ("team in (a,b)", ["a1", "a2", "b1"]),
        ("team notin (a)", ["b1", "none"]),
        ("team=a,tier=gpu", ["a2"]),
        ("team in (a, b),!tier", ["a1", "b1"]),
        ("example.com/owner=me", ["b1"]),
    ],
)
async def test_label_selectors(k8s_api: ApiClient, selector: str, expected: list[str]) -> None:
    for name, labels in {
        "a1": {"team": "a"},
        "a2": {"team": "a", "tier": "gpu"},
        "b1": {"team": "b", "example.com/owner": "me"},
        "none": {},
    }.items():
        await batch(k8s_api).create_namespaced_job(NS, make_job(name, labels=labels))
    assert await names(k8s_api, label_selector=selector) == expected


async def test_bad_label_selector_is_400(k8s_api: ApiClient) -> None:
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).list_namespaced_job(NS, label_selector="a=b c")
    assert exc.value.status == 400 and body_of(exc.value)["reason"] == "BadRequest"


async def test_field_selector_pagination_and_all_namespaces(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    fake_k8s.add_namespace("team")
    for i in range(5):
        await batch(k8s_api).create_namespaced_job(NS, make_job(f"job-{i}"))
    await batch(k8s_api).create_namespaced_job("team", make_job("job-0"))

    assert await names(k8s_api, field_selector="metadata.name=job-3") == ["job-3"]
    assert len(await names(k8s_api, field_selector="metadata.name!=job-3")) == 4

    seen: list[str] = []
    page = await batch(k8s_api).list_namespaced_job(NS, limit=2)
    seen += [j.metadata.name for j in page.items]
    assert page.metadata.remaining_item_count == 3
    while page.metadata._continue:
        page = await batch(k8s_api).list_namespaced_job(
            NS, limit=2, _continue=page.metadata._continue
        )
        seen += [j.metadata.name for j in page.items]
    assert seen == [f"job-{i}" for i in range(5)]

    everywhere = await batch(k8s_api).list_job_for_all_namespaces()
    assert sorted((j.metadata.namespace, j.metadata.name) for j in everywhere.items)[-1] == (
        "team",
        "job-0",
    )
    assert len(everywhere.items) == 6
    all_pods = await core(k8s_api).list_pod_for_all_namespaces(label_selector="job-name=job-0")
    assert {p.metadata.namespace for p in all_pods.items} == {NS, "team"}


async def test_generate_name(k8s_api: ApiClient) -> None:
    job = make_job(None, generate_name="caliban-exp-")
    created = await batch(k8s_api).create_namespaced_job(NS, job)
    assert created.metadata.name.startswith("caliban-exp-")
    assert len(created.metadata.name) == len("caliban-exp-") + 5
    long = make_job(None, generate_name="x" * 70)
    created = await batch(k8s_api).create_namespaced_job(NS, long)
    assert len(created.metadata.name) == 63


# --- errors ----------------------------------------------------------------------------------


async def test_duplicate_create_is_409_already_exists(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("dup"))
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).create_namespaced_job(NS, make_job("dup"))
    assert exc.value.status == 409
    assert body_of(exc.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'jobs.batch "dup" already exists',
        "reason": "AlreadyExists",
        "details": {"name": "dup", "group": "batch", "kind": "jobs"},
        "code": 409,
    }
    assert fake_k8s.conflicts == 1
    assert fake_k8s.creates_received == 2 and fake_k8s.creates_accepted == 1


@pytest.mark.parametrize(
    ("job", "field"),
    [
        (make_job("Upper-Case"), "metadata.name"),
        (make_job("x" * 64), "metadata.name"),
        (make_job("under_score"), "metadata.name"),
        (make_job("ok", labels={"caliban/run": "has space"}), "metadata.labels"),
        (make_job("ok", labels={"a/b/c": "v"}), "metadata.labels"),
        (make_job("ok", labels={"k": "v" * 64}), "metadata.labels"),
        (make_job("ok", labels={"-bad": "v"}), "metadata.labels"),
    ],
)
async def test_invalid_name_or_labels_is_422(
    k8s_api: ApiClient, job: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).create_namespaced_job(NS, job)
    assert exc.value.status == 422
    body = body_of(exc.value)
    assert body["reason"] == "Invalid" and " is invalid: " in body["message"]
    assert body["details"]["kind"] == "Job" and body["details"]["group"] == "batch"
    assert body["details"]["causes"][0]["field"].startswith(field)


async def test_job_without_restart_policy_is_rejected(k8s_api: ApiClient) -> None:
    job = make_job("no-policy")
    del job["spec"]["template"]["spec"]["restartPolicy"]
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).create_namespaced_job(NS, job)
    assert exc.value.status == 422
    assert 'Unsupported value: "Always"' in body_of(exc.value)["message"]


async def test_unknown_namespace_is_404(k8s_api: ApiClient) -> None:
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).create_namespaced_job("nope", make_job("x"))
    assert exc.value.status == 404
    assert body_of(exc.value)["message"] == 'namespaces "nope" not found'
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).read_namespaced_job("missing", NS)
    assert exc.value.status == 404
    assert body_of(exc.value)["message"] == 'jobs.batch "missing" not found'


async def test_namespaces_and_version(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    fake_k8s.add_namespace("extra")
    listed = await core(k8s_api).list_namespace()
    assert {n.metadata.name for n in listed.items} >= {"default", "kube-system", "extra"}
    ns = await core(k8s_api).read_namespace("extra")
    assert ns.status.phase == "Active"
    version = await client.VersionApi(k8s_api).get_code()
    assert version.git_version == fake_k8s.git_version


# --- delete ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "pods_left", "orphaned"),
    [
        ({"propagation_policy": "Background"}, 0, False),
        ({"body": client.V1DeleteOptions(propagation_policy="Background")}, 0, False),
        ({"propagation_policy": "Orphan"}, 1, True),
        ({}, 1, True),  # batch/v1 Jobs orphan their pods by default
        # A non-empty body wins over the query string, as on a real apiserver.
        ({"propagation_policy": "Background", "body": client.V1DeleteOptions()}, 1, True),
    ],
)
async def test_delete_propagation(
    fake_k8s: FakeKubernetes,
    k8s_api: ApiClient,
    how: dict[str, Any],
    pods_left: int,
    orphaned: bool,
) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("victim"))
    fake_k8s.set_job_running(NS, "victim")
    result = await batch(k8s_api).delete_namespaced_job("victim", NS, **how)
    assert isinstance(result, client.V1Status) and result.status == "Success"
    assert result.details.name == "victim"
    assert fake_k8s.job(NS, "victim") is None and fake_k8s.deletes == 1
    pods = fake_k8s.pods(NS)
    assert len(pods) == pods_left
    if orphaned:
        assert "ownerReferences" not in pods[0]["metadata"]


async def test_foreground_delete_keeps_job_until_pods_are_gone(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("fg"))
    await batch(k8s_api).delete_namespaced_job("fg", NS, propagation_policy="Foreground")
    still = await batch(k8s_api).read_namespaced_job("fg", NS)
    assert still.metadata.deletion_timestamp is not None
    assert still.metadata.finalizers == ["foregroundDeletion"]
    for _ in range(100):
        if fake_k8s.job(NS, "fg") is None:
            break
        await asyncio.sleep(0.01)
    assert fake_k8s.job(NS, "fg") is None and fake_k8s.pods(NS) == []


async def test_delete_collection_and_missing(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    for name, run in (("a", "r1"), ("b", "r1"), ("c", "r2")):
        await batch(k8s_api).create_namespaced_job(NS, make_job(name, labels={"run": run}))
    await batch(k8s_api).delete_collection_namespaced_job(
        NS, label_selector="run=r1", propagation_policy="Background"
    )
    assert await names(k8s_api) == ["c"]
    assert {p["metadata"]["labels"]["job-name"] for p in fake_k8s.pods(NS)} == {"c"}
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).delete_namespaced_job("a", NS)
    assert exc.value.status == 404


async def test_deleting_a_running_pod_gets_it_replaced(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("retry", backoffLimit=2))
    [pod] = fake_k8s.pods(NS, job="retry")
    deleted = await core(k8s_api).delete_namespaced_pod(pod["metadata"]["name"], NS)
    assert deleted.metadata.deletion_timestamp is not None
    [replacement] = fake_k8s.pods(NS, job="retry")
    assert replacement["metadata"]["name"] != pod["metadata"]["name"]
    assert fake_k8s.job(NS, "retry")["status"]["failed"] == 1  # type: ignore[index]


# --- watch -----------------------------------------------------------------------------------


def finished(_type: str, job: Any) -> bool:
    return any(c.type in ("Complete", "Failed") for c in job.status.conditions or [])


async def collect(
    api: ApiClient,
    timeout: int = 1,
    until: Callable[[str, Any], bool] | None = None,
    **kwargs: Any,
) -> list[tuple[str, Any]]:
    """Job watch events until ``until`` says stop, or the server ends the watch."""
    events: list[tuple[str, Any]] = []
    async with watch.Watch() as w:
        async for ev in w.stream(
            batch(api).list_namespaced_job, NS, timeout_seconds=timeout, **kwargs
        ):
            events.append((ev["type"], ev["object"]))
            if until is not None and until(ev["type"], ev["object"]):
                w.stop()
    return events


async def test_watch_through_success(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("w1", labels={"run": "r"}))
    await batch(k8s_api).create_namespaced_job(NS, make_job("other"))

    async def drive() -> None:
        for _ in range(500):  # change things only once the watch is open
            if fake_k8s.watch_calls:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        fake_k8s.set_job_running(NS, "w1")
        fake_k8s.succeed_job(NS, "w1")

    driver = asyncio.create_task(drive())
    events = await collect(k8s_api, timeout=5, until=finished, label_selector="run=r")
    await driver
    assert events[0][0] == "ADDED" and events[0][1].metadata.name == "w1"
    assert all(t == "MODIFIED" for t, _ in events[1:])
    types = [[c.type for c in (o.status.conditions or [])] for _, o in events[1:]]
    # The interim SuccessCriteriaMet arrives in its own update before Complete.
    assert ["SuccessCriteriaMet"] in types
    final = events[-1][1]
    assert [c.type for c in final.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert final.status.succeeded == 1 and final.status.active is None
    assert final.status.completion_time is not None
    assert [p["status"]["phase"] for p in fake_k8s.pods(NS, job="w1")] == ["Succeeded"]
    assert fake_k8s.watch_calls == 1


async def test_watch_through_failure(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    created = await batch(k8s_api).create_namespaced_job(NS, make_job("w2"))
    fake_k8s.set_job_running(NS, "w2")
    fake_k8s.fail_job(NS, "w2", reason="DeadlineExceeded")
    events = await collect(
        k8s_api, until=finished, resource_version=created.metadata.resource_version
    )
    final = events[-1][1]
    conditions = final.status.conditions
    assert [c.type for c in conditions] == ["FailureTarget", "Failed"]
    assert conditions[1].status == "True" and conditions[1].reason == "DeadlineExceeded"
    assert final.status.failed == 1 and final.status.completion_time is None
    assert [p["status"]["phase"] for p in fake_k8s.pods(NS, job="w2")] == ["Failed"]
    # Resuming from the create's version replays the controller's update too.
    assert events[0][0] == "MODIFIED" and events[0][1].status.active == 1


async def test_watch_deleted_event_and_resume(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("gone"))
    listed = await batch(k8s_api).list_namespaced_job(NS)
    await batch(k8s_api).delete_namespaced_job("gone", NS, propagation_policy="Background")
    events = await collect(
        k8s_api,
        until=lambda t, _: t == "DELETED",
        resource_version=listed.metadata.resource_version,
    )
    assert [t for t, _ in events] == ["DELETED"]


async def test_watch_410_after_compaction(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    created = await batch(k8s_api).create_namespaced_job(NS, make_job("old"))
    fake_k8s.compact()
    with pytest.raises(ApiException) as exc:
        await collect(k8s_api, resource_version=created.metadata.resource_version)
    assert exc.value.status == 410
    assert "too old resource version" in str(exc.value.reason)


async def test_watch_history_is_bounded() -> None:
    async with FakeKubernetes(token=None, history_size=3) as kube:
        api = await config.new_client_from_config_dict(kube.kubeconfig_dict())
        async with api:
            first = await batch(api).create_namespaced_job(NS, make_job("h0"))
            for i in range(1, 4):
                await batch(api).create_namespaced_job(NS, make_job(f"h{i}"))
            with pytest.raises(ApiException) as exc:
                await collect(api, resource_version=first.metadata.resource_version)
            assert exc.value.status == 410


async def test_watch_param_spellings(fake_k8s: FakeKubernetes) -> None:
    headers = {"Authorization": f"Bearer {K8S_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for value in ("True", "true", "1"):
            url = f"{fake_k8s.url}/apis/batch/v1/namespaces/default/jobs"
            params = {"watch": value, "timeoutSeconds": "0"}
            async with http.get(url, params=params) as resp:
                assert resp.status == 200
                assert await resp.read() == b""
        assert fake_k8s.watch_calls == 3


async def test_watch_pods(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("pw"))
    fake_k8s.set_job_running(NS, "pw")
    phases = []
    async with watch.Watch() as w:
        async for ev in w.stream(
            core(k8s_api).list_namespaced_pod, NS, label_selector="job-name=pw", timeout_seconds=0
        ):
            phases.append((ev["type"], ev["object"].status.phase))
    assert phases == [("ADDED", "Running")]


async def test_watch_field_selector_enter_and_leave(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    """An object that starts matching arrives as ADDED and one that stops as DELETED."""
    await batch(k8s_api).create_namespaced_job(NS, make_job("phase"))
    listed = await core(k8s_api).list_namespaced_pod(NS)
    fake_k8s.set_job_running(NS, "phase")
    fake_k8s.succeed_job(NS, "phase")
    seen = []
    async with watch.Watch() as w:
        async for ev in w.stream(
            core(k8s_api).list_namespaced_pod,
            NS,
            field_selector="status.phase=Running",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        ):
            seen.append((ev["type"], ev["object"].status.phase))
            if ev["type"] == "DELETED":
                w.stop()
    assert seen == [("ADDED", "Running"), ("DELETED", "Succeeded")]


async def test_close_ends_open_watches_and_follows() -> None:
    kube = await FakeKubernetes(token=None).start()
    api = await config.new_client_from_config_dict(kube.kubeconfig_dict())
    async with api, contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(kube.close)  # idempotent: also runs if an assert fails
        await batch(api).create_namespaced_job(NS, make_job("long"))
        kube.set_job_running(NS, "long")
        [pod] = kube.pods(NS)

        async def follow() -> str:
            out = []
            async with watch.Watch() as w:
                async for line in w.stream(
                    core(api).read_namespaced_pod_log, pod["metadata"]["name"], NS
                ):
                    out.append(line)
            return "".join(out)

        watcher = asyncio.create_task(collect(api, timeout=60))
        follower = asyncio.create_task(follow())
        # Wait until both streams are open (each Watch() first builds its own ApiClient and
        # SSL context, which can take a while on a busy machine).
        for _ in range(500):
            if kube.calls["watch jobs"] and kube.calls["log pods"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await kube.close()
        assert loop.time() - started < 0.5
        events = await asyncio.wait_for(watcher, 1)
        assert [t for t, _ in events] == ["ADDED"]
        assert await asyncio.wait_for(follower, 1) == ""


# --- pods, logs, configmaps, indexed jobs ----------------------------------------------------


async def test_pod_logs_plain_and_follow(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("logs"))
    [pod] = fake_k8s.pods(NS, job="logs")
    name = pod["metadata"]["name"]
    with pytest.raises(ApiException) as exc:  # not started yet
        await core(k8s_api).read_namespaced_pod_log(name, NS)
    assert exc.value.status == 400 and "waiting to start" in body_of(exc.value)["message"]

    fake_k8s.set_job_running(NS, "logs")
    fake_k8s.set_pod_log(NS, name, "epoch 1\nepoch 2\n")
    text = await core(k8s_api).read_namespaced_pod_log(name, NS, container="main")
    assert text == "epoch 1\nepoch 2\n"
    assert await core(k8s_api).read_namespaced_pod_log(name, NS, tail_lines=1) == "epoch 2\n"

    async def produce() -> None:
        await asyncio.sleep(0.05)
        fake_k8s.append_pod_log(NS, name, "epoch 3\n")
        await asyncio.sleep(0.05)
        fake_k8s.append_pod_log(NS, name, "done\n")
        fake_k8s.succeed_job(NS, "logs")

    producer = asyncio.create_task(produce())
    lines = []
    async with watch.Watch() as w:
        async for line in w.stream(core(k8s_api).read_namespaced_pod_log, name, NS):
            lines.append(line)
    await producer
    assert "".join(lines) == "epoch 1\nepoch 2\nepoch 3\ndone\n"


async def test_preloaded_log_text_goes_through_json_decoding(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    """kubernetes_asyncio json.loads() a str response first: JSON-looking logs get mangled."""
    await batch(k8s_api).create_namespaced_job(NS, make_job("jl"))
    fake_k8s.set_job_running(NS, "jl")
    fake_k8s.set_job_log(NS, "jl", '{"loss": 0.5}')
    [pod] = fake_k8s.pods(NS, job="jl")
    name = pod["metadata"]["name"]
    assert await core(k8s_api).read_namespaced_pod_log(name, NS) == "{'loss': 0.5}"
    raw = await core(k8s_api).read_namespaced_pod_log(name, NS, _preload_content=False)
    assert await raw.text() == '{"loss": 0.5}'


async def test_configmaps(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    cm = {"metadata": {"name": "cfg", "labels": {"run": "r"}}, "data": {"a.json": "{}"}}
    created = await core(k8s_api).create_namespaced_config_map(NS, cm)
    assert created.kind == "ConfigMap" and created.metadata.uid
    with pytest.raises(ApiException) as exc:
        await core(k8s_api).create_namespaced_config_map(NS, cm)
    assert exc.value.status == 409 and body_of(exc.value)["details"] == {
        "name": "cfg",
        "kind": "configmaps",
    }
    got = await core(k8s_api).read_namespaced_config_map("cfg", NS)
    assert got.data == {"a.json": "{}"}
    listed = await core(k8s_api).list_namespaced_config_map(NS, label_selector="run=r")
    assert [c.metadata.name for c in listed.items] == ["cfg"]
    status = await core(k8s_api).delete_namespaced_config_map("cfg", NS)
    assert status.status == "Success" and fake_k8s.configmaps() == []
    with pytest.raises(ApiException) as exc:
        await core(k8s_api).create_namespaced_config_map(
            NS, {"metadata": {"name": "bad"}, "data": {"no/slash": "x"}}
        )
    assert exc.value.status == 422


async def test_indexed_job(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    job = make_job("idx", completionMode="Indexed", completions=3, parallelism=2, backoffLimit=1)
    await batch(k8s_api).create_namespaced_job(NS, job)
    pods = fake_k8s.pods(NS, job="idx")
    index_key = "batch.kubernetes.io/job-completion-index"
    assert sorted(p["metadata"]["annotations"][index_key] for p in pods) == ["0", "1"]
    pod0 = next(p for p in pods if p["metadata"]["annotations"][index_key] == "0")
    assert pod0["metadata"]["name"].startswith("idx-0-")
    assert pod0["spec"]["hostname"] == "idx-0"
    env = pod0["spec"]["containers"][0]["env"][0]
    assert env["name"] == "JOB_COMPLETION_INDEX"
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{index_key}']"

    fake_k8s.set_job_running(NS, "idx")
    fake_k8s.succeed_index(NS, "idx", 1)
    status = fake_k8s.job(NS, "idx")["status"]  # type: ignore[index]
    assert status["completedIndexes"] == "1" and status["succeeded"] == 1
    # Index 2 starts as soon as a slot is free.
    indexes = {p["metadata"]["annotations"][index_key] for p in fake_k8s.pods(NS, job="idx")}
    assert indexes == {"0", "1", "2"}

    fake_k8s.fail_index(NS, "idx", 0)  # first failure: under backoffLimit=1, retried
    assert fake_k8s.job(NS, "idx")["status"]["failed"] == 1  # type: ignore[index]
    fake_k8s.set_job_running(NS, "idx")
    fake_k8s.succeed_index(NS, "idx", 0)
    done = fake_k8s.succeed_index(NS, "idx", 2)
    assert done["status"]["completedIndexes"] == "0-2"
    assert [c["type"] for c in done["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    read = await batch(k8s_api).read_namespaced_job("idx", NS)
    assert read.status.completed_indexes == "0-2"


async def test_indexed_job_failed_indexes(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    job = make_job(
        "pidx", completionMode="Indexed", completions=2, parallelism=2, backoffLimitPerIndex=0
    )
    await batch(k8s_api).create_namespaced_job(NS, job)
    fake_k8s.fail_index(NS, "pidx", 1)
    assert fake_k8s.job(NS, "pidx")["status"]["failedIndexes"] == "1"  # type: ignore[index]
    done = fake_k8s.succeed_index(NS, "pidx", 0)
    assert done["status"]["conditions"][-1]["type"] == "Failed"
    assert done["status"]["conditions"][-1]["reason"] == "FailedIndexes"


async def test_backoff_limit_and_parallel_completions(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    await batch(k8s_api).create_namespaced_job(NS, make_job("par", completions=3, parallelism=2))
    assert len(fake_k8s.pods(NS, job="par")) == 2
    done = fake_k8s.succeed_job(NS, "par")
    assert done["status"]["succeeded"] == 3 and len(fake_k8s.pods(NS, job="par")) == 3

    await batch(k8s_api).create_namespaced_job(NS, make_job("bo", backoffLimit=1))
    [pod] = fake_k8s.pods(NS, job="bo")
    fake_k8s.fail_pod(NS, pod["metadata"]["name"])  # retried
    pods = [p for p in fake_k8s.pods(NS, job="bo") if p["status"]["phase"] == "Pending"]
    fake_k8s.fail_pod(NS, pods[0]["metadata"]["name"])  # over the limit
    job = fake_k8s.job(NS, "bo")
    assert job is not None and job["status"]["conditions"][-1]["reason"] == "BackoffLimitExceeded"


async def test_auto_lifecycle(k8s_api: ApiClient, fake_k8s: FakeKubernetes) -> None:
    fake_k8s.auto = AutoLifecycle(
        start_after=0.01,
        run_for=0.02,
        outcome=lambda job: "fail" if job["metadata"]["name"] == "bad" else "succeed",
        log="hello\n",
    )
    await batch(k8s_api).create_namespaced_job(NS, make_job("good"))
    await batch(k8s_api).create_namespaced_job(NS, make_job("bad"))
    for _ in range(100):
        jobs = fake_k8s.jobs(NS)
        if all(
            j["status"].get("conditions", [{}])[-1].get("type") in ("Complete", "Failed")
            for j in jobs
        ):
            break
        await asyncio.sleep(0.01)
    final = {j["metadata"]["name"]: j["status"]["conditions"][-1]["type"] for j in jobs}
    assert final == {"bad": "Failed", "good": "Complete"}
    [pod] = fake_k8s.pods(NS, job="good")
    assert await core(k8s_api).read_namespaced_pod_log(pod["metadata"]["name"], NS) == "hello\n"
