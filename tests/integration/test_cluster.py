"""``caliban cluster job submit`` through the library API, against the local Kubernetes API
server reached through a kubeconfig (the production code path, unchanged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from caliban.adapters.store import Planned
from caliban.errors import BackendError
from caliban.options import ClusterOptions, ProjectOptions
from caliban.platforms.kubernetes import versions as k8sversions
from caliban.platforms.kubernetes.client import connections
from caliban.platforms.kubernetes.jobs import KubeSubmitter
from caliban.spec import JobState
from tests.conftest import MakeProject
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.k8s_schema import validate
from tests.integration.conftest import KubeRequest, OpenSession

from .cluster_support import IMAGE, JOB_LABEL, names_of, request, wait_for


async def test_a_sweep_becomes_one_labelled_job_per_experiment(
    make_project: MakeProject, kube: FakeKubernetes, kubeconfig: Path, cluster_session: OpenSession
) -> None:
    folder = make_project()
    req = request(
        folder,
        kubeconfig,
        experiments={"lr": [0.1, 0.2], "big": [True, False]},
        script_args=("--seed", "1"),
        xgroup="sweep",
        labels=(("team", "Vision Lab"),),
        gpu_spec="2xT4",
        min_mem=8000,
        project=ProjectOptions(folder=folder, entry="job.py", use_gpu=True),
    )
    async with cluster_session() as s:
        result = await s.cluster_submit(req)
        store_id = (await s.store()).store_id
    assert result.ok and len(result.jobs) == 4
    assert kube.creates_accepted == 4 and kube.duplicates(JOB_LABEL) == {}
    remote = {j["metadata"]["labels"][JOB_LABEL]: j for j in kube.jobs("default")}
    for job in result.jobs:
        assert job.state is JobState.SUBMITTED
        manifest = remote[job.job_id]
        assert job.platform_id == manifest["metadata"]["name"] == job.details["k8s_job"]
        labels = manifest["metadata"]["labels"]
        assert labels["team"] == "Vision-Lab" and labels["caliban.dev/xgroup"] == "sweep"
        assert labels["caliban.dev/store"] == store_id
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        assert container["args"] == list(job.args) and container["image"] == IMAGE
        assert container["resources"] == {
            "requests": {"cpu": "1000m", "memory": "8000M"},
            "limits": {"nvidia.com/gpu": "2"},
        }
        # A generic cluster: no GKE node labels to trip over.
        assert "nodeSelector" not in manifest["spec"]["template"]["spec"]
        assert job.details["cluster"]["kind"] == "kubeconfig"  # type: ignore[index]
    assert list(result.jobs[0].args) == ["--seed", "1", "--lr", "0.1", "--big"]
    # The labels reach the pods too, so pods can be selected like their Jobs.
    for pod in kube.pods("default"):
        labels = pod["metadata"]["labels"]
        assert labels["caliban.dev/xgroup"] == "sweep" and labels["team"] == "Vision-Lab"


async def test_200_jobs_are_created_exactly_once_under_faults(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    kube.error_rate, kube.error_status = 0.08, 503
    kube.drop_rate = 0.04
    kube.lost_response_rate = 0.08
    kube.fail_next(5, 429, path_prefix="/apis/batch/v1", method="POST", retry_after=0.2)
    n = 200
    async with cluster_session() as s:
        result = await s.cluster_submit(kube_request(experiments={"i": list(range(n))}))
    assert result.ok, [(j.state, j.message) for j in result.jobs if not result.ok]
    assert len(kube.jobs("default")) == n and kube.duplicates(JOB_LABEL) == {}
    assert {j.platform_id for j in result.jobs} == set(names_of(kube))
    statuses = [r.status for r in kube.requests if r.method == "POST"]
    assert statuses.count(503) > 0 and statuses.count(429) == 5
    unanswered = [r for r in kube.requests if r.method == "POST" and r.status is None]
    assert len(unanswered) > 10  # dropped before storing, or stored and the answer lost
    # An uncertain create is looked up before it is sent again, never blindly re-sent.
    assert kube.conflicts == 0 and kube.creates_accepted == n


async def test_a_409_is_adopted_when_the_label_matches_and_refused_otherwise(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    async with cluster_session() as s:
        result = await s.cluster_submit(kube_request(experiments={"i": [1, 2]}))
        first, second = result.jobs
        submitter = KubeSubmitter(await connections(s))
        # Created again without looking first (as after a crash between create and record).
        adopted = await submitter.create(first)
        assert adopted.platform_id == first.platform_id and kube.conflicts == 1
        with kube.store.modify("jobs", "default", str(second.platform_id)) as forged:
            forged["metadata"]["labels"][JOB_LABEL] = "someone-else"
        with pytest.raises(BackendError, match="is not caliban job"):
            await submitter.create(second)
    assert len(kube.jobs("default")) == 2


async def test_status_maps_outcomes_with_one_list_call(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    async with cluster_session() as s:
        result = await s.cluster_submit(
            kube_request(xgroup="st", experiments={"i": list(range(5))})
        )
        name = {j.index: str(j.platform_id) for j in result.jobs}
        kube.succeed_job("default", name[0])
        kube.fail_job("default", name[1], reason="BackoffLimitExceeded")
        kube.set_job_running("default", name[2])
        # name[3] stays pending; name[4] is deleted behind caliban's back.
        kube.store.remove("jobs", "default", name[4])
        before = kube.list_calls
        jobs = await s.status(xgroup="st", max_jobs=0)
        assert kube.list_calls - before == 1
        states = {j.index: j.state for j in jobs}
        assert states == {
            0: JobState.SUCCEEDED,
            1: JobState.FAILED,
            2: JobState.RUNNING,
            3: JobState.SUBMITTED,
            4: JobState.UNKNOWN,
        }
        assert "BackoffLimitExceeded" in str(jobs[1].message)
        # Finished jobs are not asked about again.
        before = kube.list_calls
        await s.status(xgroup="st", max_jobs=0)
        assert kube.list_calls - before == 1


async def test_stop_deletes_jobs_with_their_pods(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    async with cluster_session() as s:
        result = await s.cluster_submit(
            kube_request(xgroup="stop", experiments={"i": list(range(4))})
        )
        name = {j.index: str(j.platform_id) for j in result.jobs}
        for i in range(3):
            kube.set_job_running("default", name[i])
        kube.succeed_job("default", name[3])
        assert len(kube.pods("default")) == 4
        stopped = await s.stop(xgroup="stop")
        states = {j.index: j.state for j in stopped}
        assert states == {
            0: JobState.STOPPED,
            1: JobState.STOPPED,
            2: JobState.STOPPED,
            3: JobState.SUCCEEDED,
        }
    deletes = [r for r in kube.requests if r.method == "DELETE"]
    assert len(deletes) == 3
    assert all(r.query.get("propagationPolicy") == "Foreground" for r in deletes)
    await wait_for(lambda: names_of(kube) == [name[3]])
    assert [p["metadata"]["labels"]["job-name"] for p in kube.pods("default")] == [name[3]]


async def test_resubmit_recreates_failed_jobs_with_the_recorded_manifest(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    async with cluster_session() as s:
        result = await s.cluster_submit(kube_request(xgroup="re", experiments={"i": [1, 2, 3]}))
        failed = result.jobs[1]
        kube.fail_job("default", str(failed.platform_id))
        again = await s.resubmit(xgroup="re")
    (new,) = again.jobs
    assert new.job_id != failed.job_id and new.args == failed.args
    assert new.state is JobState.SUBMITTED and new.experiment_id == failed.experiment_id
    created = kube.job("default", str(new.platform_id))
    assert created is not None
    assert created["metadata"]["labels"][JOB_LABEL] == new.job_id
    (container,) = created["spec"]["template"]["spec"]["containers"]
    assert container["args"] == list(failed.args)
    assert {"name": "CALIBAN_JOB_ID", "value": new.job_id} in container["env"]
    assert len(kube.jobs("default")) == 4 and kube.duplicates(JOB_LABEL) == {}


def run_pod_command(
    job: dict[str, Any], configmap: dict[str, Any], index: int, project: Path, tmp_path: Path
) -> dict[str, Any]:
    """Run a pod's container command as the kubelet would, with python3 and the project
    folder standing in for the image, and the ConfigMap as the mounted file."""
    import os
    import subprocess
    import sys

    (container,) = job["spec"]["template"]["spec"]["containers"]
    args_file = tmp_path / f"args-{index}.json"
    args_file.write_text(configmap["data"]["args.json"])
    argv = [
        sys.executable if a == "python3" else a for a in [*container["command"], *container["args"]]
    ]
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), "CALIBAN_ARGS_FILE": str(args_file)}
    out = subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, check=True, timeout=60
    )
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


async def test_indexed_sweep_is_one_job_and_each_index_runs_its_experiment(
    tmp_path: Path,
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    cluster_session: OpenSession,
) -> None:
    project = make_project()
    tags = [f"t{i}" for i in range(7)]
    async with cluster_session() as s:
        result = await s.cluster_submit(
            request(
                project,
                kubeconfig,
                xgroup="idx",
                indexed=True,
                max_parallel=3,
                experiments={"tag": tags},
            )
        )
        assert result.ok and len(result.jobs) == 7
        assert kube.calls["create jobs"] == 1 and kube.calls["create configmaps"] == 1
        (job,) = kube.jobs("default")
        (cm,) = kube.configmaps("default")
        name = job["metadata"]["name"]
        assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (7, 3)
        assert job["spec"]["completionMode"] == "Indexed"
        assert cm["metadata"]["name"] == name
        assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        entries = json.loads(cm["data"]["args.json"])
        by_index = {int(str(j.details["completion_index"])): j for j in result.jobs}
        for i, record in by_index.items():
            assert entries[i] == {"job": record.job_id, "args": list(record.args)}
            report = run_pod_command(job, cm, i, project, tmp_path)
            assert report["tag"] == record.kwargs["tag"] and report["job"] == record.job_id
        # Status per experiment, from the Job's index lists and its running pods.
        kube.set_job_running("default", name)
        kube.succeed_index("default", name, 0)
        kube.fail_index("default", name, 1)
        before = kube.list_calls
        jobs = {
            int(str(j.details["completion_index"])): j
            for j in await s.status(xgroup="idx", max_jobs=0)
        }
        assert kube.list_calls - before == 1
        assert jobs[0].state is JobState.SUCCEEDED and jobs[1].state is JobState.FAILED
        assert jobs[2].state is JobState.RUNNING
        assert {jobs[i].state for i in range(3, 7)} == {JobState.SUBMITTED}
        # Stopping the sweep removes its Job, pods and ConfigMap.
        # (finished experiments are not candidates; the rest end STOPPED).
        stopped = {j.job_id: j.state for j in await s.stop(xgroup="idx")}
        assert stopped == {jobs[i].job_id: JobState.STOPPED for i in range(2, 7)}
    await wait_for(lambda: not kube.jobs("default") and not kube.pods("default"))
    assert kube.configmaps("default") == []


async def test_stopping_part_of_an_indexed_sweep_marks_its_indexes(
    tmp_path: Path,
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    cluster_session: OpenSession,
) -> None:
    project = make_project()
    async with cluster_session() as s:
        result = await s.cluster_submit(
            request(
                project,
                kubeconfig,
                xgroup="part",
                indexed=True,
                experiments={"tag": ["a", "b", "c", "d"]},
            )
        )
        name = str(result.jobs[0].details["k8s_job"])
        kube.set_job_running("default", name)
        (before,) = kube.configmaps("default")
        backend = await s.platform(result.jobs[0].platform)
        some = [j for j in result.jobs if j.details["completion_index"] in (1, 3)]
        updates = await backend.cancel(some)
    assert {u.state for u in updates} == {JobState.STOPPED}
    (cm,) = kube.configmaps("default")
    entries = json.loads(cm["data"]["args.json"])
    assert [bool(e.get("skip")) for e in entries] == [False, True, False, True]
    # Updated in place, never deleted (a pod starting meanwhile would find nothing).
    assert cm["metadata"]["uid"] == before["metadata"]["uid"]
    assert cm["metadata"]["ownerReferences"] == before["metadata"]["ownerReferences"]
    (job,) = kube.jobs("default")
    assert run_pod_command(job, cm, 0, project, tmp_path)["tag"] == "a"
    running = {
        p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
        for p in kube.pods("default")
        if p["status"]["phase"] == "Running"
    }
    assert running == {"0", "2"}


async def test_logs_of_a_job_and_of_an_index(
    kube: FakeKubernetes, kube_request: KubeRequest, cluster_session: OpenSession
) -> None:
    async with cluster_session() as s:
        plain = await s.cluster_submit(kube_request(xgroup="lg", experiments={"i": [1]}))
        name = str(plain.jobs[0].platform_id)
        kube.set_job_running("default", name)
        (pod,) = kube.pods("default", job=name)
        kube.set_pod_log("default", pod["metadata"]["name"], '{"json": "stays text"}\nline 2\n')
        text = "".join([c async for c in s.logs(plain.jobs[0].job_id)])
        assert text == '{"json": "stays text"}\nline 2\n'

        # --follow streams what the pod writes until it finishes.
        got: list[str] = []

        async def follow() -> None:
            async for chunk in s.logs(plain.jobs[0].job_id, follow=True):
                got.append(chunk)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await wait_for(lambda: "".join(got).endswith("line 2\n"))
            kube.append_pod_log("default", pod["metadata"]["name"], "epoch 1\n")
            await wait_for(lambda: "".join(got).endswith("epoch 1\n"))
            kube.succeed_job("default", name)
        assert "".join(got).endswith("epoch 1\n")

        indexed = await s.cluster_submit(
            kube_request(xgroup="lgi", indexed=True, experiments={"i": [1, 2]})
        )
        job_name = str(indexed.jobs[0].details["k8s_job"])
        kube.set_job_running("default", job_name)
        for pod in kube.pods("default", job=job_name):
            index = pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]
            kube.set_pod_log("default", pod["metadata"]["name"], f"index {index}\n")
        second = next(j for j in indexed.jobs if j.details["completion_index"] == 1)
        assert "".join([c async for c in s.logs(second.job_id)]) == "index 1\n"


async def test_planned_jobs_left_by_a_crash_are_looked_up_not_duplicated(
    make_project: MakeProject, kube: FakeKubernetes, kubeconfig: Path, cluster_session: OpenSession
) -> None:
    """The store says PLANNED (the process died before recording), the cluster has some."""
    from caliban.limits import Pacing
    from caliban.platforms.kubernetes.platform import KubeSettings
    from caliban.spec import Platform
    from caliban.sweep.engine import launch

    project = make_project()
    async with cluster_session() as s:
        result = await s.cluster_submit(
            request(project, kubeconfig, xgroup="crash", experiments={"i": list(range(6))})
        )
        store = await s.store()
        # Roll the records back to PLANNED and delete half of the Jobs: as if the first
        # three creates happened and nothing was recorded.
        for job in result.jobs:
            await store.transition(job.job_id, JobState.PLANNED, force=True)
        for job in result.jobs[3:]:
            kube.store.remove("jobs", "default", str(job.platform_id))
        before = kube.creates_received
        planned = [Planned("reconcile", j) for j in await store.jobs(xgroup="crash")]
        platform = await s.platform(Platform.GKE)
        settings = KubeSettings(Pacing(1e9))
        jobs = (await launch(s, platform, planned, settings, xgroup="crash", total=6)).jobs
    assert kube.creates_received - before == 3
    assert {j.state for j in jobs} == {JobState.SUBMITTED}
    assert len(kube.jobs("default")) == 6


@pytest.mark.parametrize("indexed", [False, True])
async def test_export_writes_manifests_that_parse_back_to_the_same_objects(
    tmp_path: Path,
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    cluster_session: OpenSession,
    monkeypatch: pytest.MonkeyPatch,
    indexed: bool,
) -> None:
    import yaml

    from caliban.core import names
    from caliban.platforms.kubernetes import admin as cluster_admin

    project = make_project()
    sweep = {"lr": [0.1, 0.2, 0.3]}
    parsed: dict[str, list[dict[str, Any]]] = {}
    for suffix in ("yaml", "json"):
        # The same job ids for both exports, so their contents can be compared.
        monkeypatch.setattr(
            names, "new_job_id", names.JobIdFactory(clock_ms=lambda: 1, random_bits=lambda n: 7)
        )
        target = tmp_path / f"out.{suffix}"
        async with cluster_session() as s:
            result = await s.cluster_submit(
                request(
                    project,
                    kubeconfig,
                    xgroup="ex",
                    export=str(target),
                    indexed=indexed,
                    experiments=sweep,
                )
            )
        assert result.dry_run
        files = [target] if indexed else [tmp_path / f"out_{i}.{suffix}" for i in range(3)]
        parsed[suffix] = [
            o
            for f in files
            for o in await anyio.to_thread.run_sync(cluster_admin.read_manifests, str(f))
        ]
        raw = [f.read_text() for f in files]
        loaded = [yaml.safe_load_all(t) if suffix == "yaml" else [json.loads(t)] for t in raw]
        assert all(loaded)
    assert parsed["yaml"] == parsed["json"]
    assert kube.requests == []  # exporting never connects
    # What is exported is valid, by the strict schemas, wherever caliban would send it.
    oldest = k8sversions.OLDEST_INDEXED if indexed else k8sversions.OLDEST
    for obj in parsed["yaml"]:
        for minor in (oldest, k8sversions.NEWEST):
            validate(obj, minor)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in parsed["yaml"]]
    if indexed:
        assert [k for k, _ in kinds] == ["ConfigMap", "Job"] and kinds[0][1] == kinds[1][1]
    else:
        assert [k for k, _ in kinds] == ["Job"] * 3
    jobs = [o for o in parsed["yaml"] if o["kind"] == "Job"]
    args = [a for j in jobs for a in j["spec"]["template"]["spec"]["containers"][0]["args"]]
    assert (
        (args == ["python3", "job.py"])
        if indexed
        else (args == ["--lr", "0.1", "--lr", "0.2", "--lr", "0.3"])
    )

    # What was written creates exactly those objects.
    async with cluster_session() as s:
        for f in sorted(tmp_path.glob("out*.yaml")):
            await s.cluster_submit_file(ClusterOptions(kubeconfig=str(kubeconfig)), str(f))
    for obj in parsed["yaml"]:
        if obj["kind"] == "Job":
            live = kube.job("default", obj["metadata"]["name"])
            assert live is not None
            assert (
                live["spec"]["template"]["spec"]["containers"]
                == obj["spec"]["template"]["spec"]["containers"]
            )
            assert live["metadata"]["labels"] == obj["metadata"]["labels"]
        else:
            (cm,) = kube.configmaps("default")
            assert cm["data"] == obj["data"]
