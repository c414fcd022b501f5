"""The fake cluster's Kueue: queued Jobs are held (suspended, no pods) until admitted by
the test or by a per-queue capacity, then run as any Job; driven through the real client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from kubernetes_asyncio.client import ApiClient

from . import k8s_fixtures
from .k8s import AutoLifecycle, FakeKubernetes
from .k8s_fixtures import batch_api as batch
from .k8s_fixtures import make_job
from .k8s_kueue import QUEUE_LABEL

fake_k8s = k8s_fixtures.fake_k8s
k8s_api = k8s_fixtures.k8s_api

NS = "default"


def queued(name: str, queue: str = "team-a", **spec: Any) -> dict[str, Any]:
    job = make_job(name, suspend=True, **spec)
    job["metadata"]["labels"][QUEUE_LABEL] = queue
    return job


async def wait_until(check: Callable[[], bool]) -> None:
    # The auto lifecycle runs on the fake's own timers: nothing to await but the state.
    with anyio.fail_after(10):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def conditions(kube: FakeKubernetes, name: str) -> dict[str, tuple[str, str]]:
    job = kube.job(NS, name)
    assert job is not None
    return {c["type"]: (c["status"], c["reason"]) for c in job["status"].get("conditions", [])}


async def test_a_queued_job_is_held_until_admitted_then_runs(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    await batch(k8s_api).create_namespaced_job(NS, queued("held"))
    assert fake_k8s.pods(NS, "held") == []
    assert conditions(fake_k8s, "held")["Suspended"] == ("True", "JobSuspended")
    (workload,) = fake_k8s.kueue.workloads(NS)
    assert workload["spec"]["queueName"] == "team-a" and workload["status"]["conditions"] == []
    assert [j["metadata"]["name"] for j in fake_k8s.kueue.held(NS)] == ["held"]

    job = fake_k8s.admit_job(NS, "held")
    assert job["spec"]["suspend"] is False and job["status"]["startTime"]
    assert conditions(fake_k8s, "held")["Suspended"] == ("False", "JobResumed")
    assert len(fake_k8s.pods(NS, "held")) == 1
    (workload,) = fake_k8s.kueue.workloads(NS)
    assert {c["type"] for c in workload["status"]["conditions"]} == {"QuotaReserved", "Admitted"}
    fake_k8s.succeed_job(NS, "held")
    assert conditions(fake_k8s, "held")["Complete"] == ("True", "CompletionsReached")
    with pytest.raises(ValueError, match="not held"):
        fake_k8s.admit_job(NS, "held")


async def test_an_indexed_job_is_one_workload(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    job = queued("sweep", completionMode="Indexed", completions=4, parallelism=2)
    await batch(k8s_api).create_namespaced_job(NS, job)
    (workload,) = fake_k8s.kueue.workloads(NS)
    assert workload["spec"]["podSets"] == [{"name": "main", "count": 2}]
    fake_k8s.admit_job(NS, "sweep")
    assert len(fake_k8s.pods(NS, "sweep")) == 2


async def test_a_capacity_admits_in_creation_order_as_workloads_finish(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    fake_k8s.kueue.capacity["team-a"] = 2
    for name in ("a", "b", "c"):
        await batch(k8s_api).create_namespaced_job(NS, queued(name))
    await batch(k8s_api).create_namespaced_job(NS, queued("other", queue="team-b"))
    assert fake_k8s.kueue.admitted == [(NS, "a"), (NS, "b")]
    assert {j["metadata"]["name"] for j in fake_k8s.kueue.held(NS)} == {"c", "other"}
    fake_k8s.fail_job(NS, "a")
    assert fake_k8s.kueue.admitted[-1] == (NS, "c")
    assert [j["metadata"]["name"] for j in fake_k8s.kueue.held(NS)] == ["other"]


async def test_deleting_a_held_job_removes_its_workload_and_frees_nothing_twice(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    fake_k8s.kueue.capacity["team-a"] = 1
    for name in ("a", "b", "c"):
        await batch(k8s_api).create_namespaced_job(NS, queued(name))
    await batch(k8s_api).delete_namespaced_job("b", NS, propagation_policy="Background")
    assert len(fake_k8s.kueue.workloads(NS)) == 2
    assert fake_k8s.kueue.admitted == [(NS, "a")]  # "a" still holds the only slot
    await batch(k8s_api).delete_namespaced_job("a", NS, propagation_policy="Background")
    assert fake_k8s.kueue.admitted == [(NS, "a"), (NS, "c")]


async def test_auto_lifecycle_waits_for_admission(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    fake_k8s.auto = AutoLifecycle(run_for=0.0)
    await batch(k8s_api).create_namespaced_job(NS, queued("auto"))
    await batch(k8s_api).create_namespaced_job(NS, make_job("plain"))
    await wait_until(lambda: "Complete" in conditions(fake_k8s, "plain"))
    assert "Complete" not in conditions(fake_k8s, "auto")
    fake_k8s.admit_job(NS, "auto")
    await wait_until(lambda: "Complete" in conditions(fake_k8s, "auto"))
