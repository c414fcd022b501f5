"""Server versions and the ConfigMap/Job pair of an Indexed sweep, through the library API
against the fake apiserver (which validates every object against its version's schema)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from caliban.core import names
from caliban.errors import ValidationError
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes.versions import NEWEST, OLDEST, OLDEST_INDEXED
from caliban.spec import JobState
from tests.conftest import MakeProject
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.k8s_fixtures import K8S_TOKEN
from tests.integration.conftest import KubeRequest, OpenSession

from .cluster_support import JOB_LABEL, request

VERSION_PATHS = ("/version", "/version/")


@pytest.fixture
async def kube(request: pytest.FixtureRequest) -> AsyncIterator[FakeKubernetes]:
    version = getattr(request, "param", f"1.{NEWEST}")
    async with FakeKubernetes(token=K8S_TOKEN, seed=0, version=version) as server:
        yield server


@pytest.fixture
def kubeconfig(kube: FakeKubernetes, tmp_path: Path) -> Path:
    return kube.kubeconfig(tmp_path / "kubeconfig")


def version_reads(kube: FakeKubernetes) -> int:
    return sum(1 for r in kube.requests if r.path in VERSION_PATHS)


@pytest.mark.parametrize(
    ("kube", "indexed"),
    [
        (f"1.{OLDEST}", False),
        (f"1.{NEWEST}", False),
        (f"1.{OLDEST_INDEXED}", True),
        (f"1.{NEWEST}", True),
    ],
    indirect=["kube"],
)
async def test_both_ends_of_the_supported_range_accept_what_caliban_sends(
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    cluster_session: OpenSession,
    indexed: bool,
) -> None:
    folder = make_project()
    req = request(folder, kubeconfig, xgroup="v", indexed=indexed, experiments={"i": [1, 2, 3]})
    async with cluster_session() as s:
        result = await s.cluster_submit(req)
        assert result.ok and {j.state for j in result.jobs} == {JobState.SUBMITTED}
        await s.status(xgroup="v", max_jobs=0)
    # Read once for the submission and the refresh of the same cluster.
    assert version_reads(kube) == 1
    assert kube.calls["create jobs"] == (1 if indexed else 3)
    if indexed:
        (cm,) = kube.configmaps("default")
        (job,) = kube.jobs("default")
        assert kube.object_order == [
            ("ConfigMap", cm["metadata"]["name"]),
            ("Job", job["metadata"]["name"]),
        ]
        assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]


@pytest.mark.parametrize("kube", [f"1.{OLDEST_INDEXED - 1}"], indirect=True)
async def test_indexed_on_a_too_old_server_is_refused_before_anything_happens(
    tmp_path: Path,
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    cluster_session: OpenSession,
) -> None:
    folder = make_project()
    req = request(folder, kubeconfig, xgroup="old", indexed=True, experiments={"i": [1, 2]})
    async with cluster_session() as s:
        with pytest.raises(ValidationError) as err:
            await s.cluster_submit(req)
    assert err.value.exit_code == 2
    assert "an Indexed Job needs 1.29 or newer (backoffLimitPerIndex)" in err.value.message
    assert err.value.hint is not None and "without --indexed" in err.value.hint
    assert kube.object_order == [] and not (tmp_path / "home" / "caliban.db").exists()
    # One Job per experiment is fine on the same server.
    plain = request(folder, kubeconfig, xgroup="old", experiments={"i": [1, 2]})
    async with cluster_session() as s:
        result = await s.cluster_submit(plain)
    assert result.ok and kube.calls["create jobs"] == 2


@pytest.mark.parametrize("kube", ["1.25"], indirect=True)
async def test_a_server_without_pod_failure_policies_is_refused(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    req = kube_request(xgroup="old")
    async with cluster_session() as s:
        with pytest.raises(ValidationError, match=r"these Jobs need 1\.26 or newer"):
            await s.cluster_submit(req)
    assert kube.object_order == []


def indexed_name(first_id: str, n: int, prefix: str = "sweep") -> str:
    return k8sspec.job_name(prefix, first_id, reserve=k8sspec.index_reserve(n))


def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make job ids predictable; returns the first one the submission will get."""

    def factory() -> names.JobIdFactory:
        return names.JobIdFactory(clock_ms=lambda: 5, random_bits=lambda n: 11)

    monkeypatch.setattr(names, "new_job_id", factory())
    return factory()()


def leftover(kube: FakeKubernetes, name: str, owner: str, data: str) -> None:
    """A ConfigMap as an interrupted earlier attempt (or someone else) left it."""
    kube.store.insert(
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": "left-behind",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {JOB_LABEL: owner},
            },
            "data": {k8sspec.ARGS_KEY: data},
        },
    )


async def test_a_stale_configmap_without_its_job_is_replaced(
    kube: FakeKubernetes,
    kube_request: KubeRequest,
    cluster_session: OpenSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = fixed_ids(monkeypatch)
    name = indexed_name(first, 3)
    leftover(kube, name, first, json.dumps([{"job": "x", "args": ["--old"]}]))
    req = kube_request(
        xgroup="st",
        name="sweep",
        indexed=True,
        experiments={"i": [1, 2, 3]},
    )
    async with cluster_session() as s:
        result = await s.cluster_submit(req)
    assert result.ok
    (cm,) = kube.configmaps("default")
    (job,) = kube.jobs("default")
    assert cm["metadata"]["uid"] != "left-behind"
    entries = json.loads(cm["data"][k8sspec.ARGS_KEY])
    assert [e["job"] for e in entries] == [j.job_id for j in result.jobs]
    assert kube.object_order == [("ConfigMap", name), ("Job", name)]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]


async def test_a_foreign_configmap_of_that_name_fails_the_sweep_and_is_kept(
    kube: FakeKubernetes,
    kube_request: KubeRequest,
    cluster_session: OpenSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = fixed_ids(monkeypatch)
    name = indexed_name(first, 2)
    leftover(kube, name, "someone-else", "[]")
    req = kube_request(
        xgroup="fo",
        name="sweep",
        indexed=True,
        experiments={"i": [1, 2]},
    )
    async with cluster_session() as s:
        result = await s.cluster_submit(req)
    assert {j.state for j in result.jobs} == {JobState.FAILED}
    assert "a ConfigMap named " + name in str(result.jobs[0].message)
    assert kube.jobs("default") == []
    assert [c["metadata"]["uid"] for c in kube.configmaps("default")] == ["left-behind"]


async def test_a_job_refused_for_good_takes_its_configmap_with_it(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    kube.fail_next(1, 403, "/apis/batch/v1/namespaces/default/jobs", method="POST")
    req = kube_request(xgroup="rf", indexed=True, experiments={"i": [1]})
    async with cluster_session() as s:
        result = await s.cluster_submit(req)
    assert {j.state for j in result.jobs} == {JobState.FAILED}
    assert [k for k, _ in kube.object_order] == ["ConfigMap"]  # created first...
    assert kube.configmaps("default") == [] and kube.jobs("default") == []  # ...then removed


async def test_the_fake_answers_an_invalid_object_like_the_apiserver(
    kube: FakeKubernetes, kubeconfig: Path, tmp_path: Path, cenv: dict[str, str]
) -> None:
    from caliban.errors import BackendError
    from caliban.platforms.kubernetes.client import KubeClient, _kubeconfig_client
    from caliban.platforms.kubernetes.spec import ClusterTarget, JobShape

    kube.git_version = f"v1.{OLDEST}.2"  # the knob can change while it serves
    job = k8sspec.job_manifest(JobShape(image="img"), name="bad-1", job_id="1", args=[], labels={})
    del job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"]
    target = ClusterTarget("kubeconfig", kubeconfig=str(kubeconfig), context="fake")
    client = KubeClient(await _kubeconfig_client(target), target)
    try:
        assert (await client.server_version()).minor == OLDEST
        with pytest.raises(BackendError) as err:
            await client.create_job("default", job)
        assert err.value.status == 422
        response = await client.batch.create_namespaced_job("default", job, _preload_content=False)
        body = json.loads(await response.text())
    finally:
        await client.api.close()
    field = "spec.podFailurePolicy.rules[0].onPodConditions[0].status"
    assert field in err.value.message
    assert (body["kind"], body["status"], body["reason"], body["code"]) == (
        "Status",
        "Failure",
        "Invalid",
        422,
    )
    assert body["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": field}
    ]
    assert kube.jobs("default") == []


async def test_a_file_with_an_indexed_job_is_refused_by_a_too_old_server(
    tmp_path: Path,
    kube: FakeKubernetes,
    kube_request: KubeRequest,
    kubeconfig: Path,
    cluster_session: OpenSession,
) -> None:
    from caliban.options import ClusterOptions

    out = tmp_path / "sweep.yaml"
    req = kube_request(indexed=True, export=str(out), experiments={"i": [1, 2]})
    kube.git_version = f"v1.{OLDEST_INDEXED - 1}.0"
    async with cluster_session() as s:
        await s.cluster_submit(req)
        with pytest.raises(ValidationError, match=r"an Indexed Job needs 1\.29"):
            await s.cluster_submit_file(ClusterOptions(kubeconfig=str(kubeconfig)), str(out))
    assert kube.object_order == []


async def test_a_job_left_without_its_configmap_is_adopted_and_given_one(
    kube: FakeKubernetes,
    kube_request: KubeRequest,
    cluster_session: OpenSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What an older caliban (Job first) left when it was killed before the ConfigMap.
    first = fixed_ids(monkeypatch)
    name = indexed_name(first, 2)
    kube.store.insert(
        "jobs",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": "older-job",
                "labels": {JOB_LABEL: first},
            },
            "spec": {"completions": 2, "completionMode": "Indexed"},
            "status": {},
        },
    )
    req = kube_request(
        xgroup="oj",
        name="sweep",
        indexed=True,
        experiments={"i": [1, 2]},
    )
    async with cluster_session() as s:
        result = await s.cluster_submit(req)
    assert {j.state for j in result.jobs} == {JobState.SUBMITTED}
    assert kube.creates_accepted == 0  # the Job was adopted after its create met a 409
    (cm,) = kube.configmaps("default")
    assert [(o["name"], o["uid"]) for o in cm["metadata"]["ownerReferences"]] == [
        (name, "older-job")
    ]
    entries = json.loads(cm["data"][k8sspec.ARGS_KEY])
    assert [e["job"] for e in entries] == [j.job_id for j in result.jobs]
