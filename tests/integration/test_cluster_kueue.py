"""``caliban cluster job submit --queue``: the real console script against the fake cluster
with its Kueue model. Jobs are held (QUEUED) until admitted, then run and finish as any
Job; an Indexed sweep is one Workload; ``stop`` deletes held Jobs; bad names exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MakeProject
from tests.fakes.k8s import FakeKubernetes

from .cluster_support import caliban, cli_env, names_of, submit_args, wait_for

NS = "default"
QUEUE = "kueue.x-k8s.io/queue-name"
PRIORITY = "kueue.x-k8s.io/priority-class"


@pytest.fixture
def folder(make_project: MakeProject) -> Path:
    return make_project()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def submit(kubeconfig: Path, folder: Path, *extra: str, **values: list[object]) -> list[str]:
    config = folder / "exp.json"
    config.write_text(json.dumps(values))
    return submit_args(kubeconfig, config, *extra)


async def status(folder: Path, env: dict[str, str], xgroup: str) -> dict[int, dict[str, object]]:
    code, out, err = await caliban(
        ["status", "--xgroup", xgroup, "--max_jobs", "0", "--json"], cwd=folder, env=env
    )
    assert code == 0, err
    return {int(str(j["index"])): j for j in json.loads(out)}


async def states(folder: Path, env: dict[str, str], xgroup: str) -> dict[int, object]:
    return {i: j["state"] for i, j in (await status(folder, env, xgroup)).items()}


async def test_queued_jobs_are_held_then_admitted_run_and_finish(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    code, out, err = await caliban(
        submit(
            kubeconfig,
            folder,
            "--xgroup",
            "kq",
            "--queue",
            "team-a",
            "--priority_class",
            "high",
            lr=[0.1, 0.2, 0.3],
        ),
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    assert "3 job(s): 3 queued" in out
    jobs = kube.jobs(NS)
    assert len(jobs) == 3 and len(kube.kueue.workloads(NS)) == 3
    for job in jobs:
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"][QUEUE] == "team-a"
        assert job["metadata"]["labels"][PRIORITY] == "high"
        assert kube.pods(NS, job["metadata"]["name"]) == []

    recorded = await status(folder, env, "kq")
    assert {j["state"] for j in recorded.values()} == {"QUEUED"}
    name = {i: str(j["platform_id"]) for i, j in recorded.items()}

    kube.admit_job(NS, name[0])
    kube.admit_job(NS, name[1])
    assert await states(folder, env, "kq") == {0: "SUBMITTED", 1: "SUBMITTED", 2: "QUEUED"}
    kube.set_job_running(NS, name[0])
    kube.set_job_running(NS, name[1])
    assert await states(folder, env, "kq") == {0: "RUNNING", 1: "RUNNING", 2: "QUEUED"}
    kube.succeed_job(NS, name[0])
    kube.fail_job(NS, name[1])
    assert await states(folder, env, "kq") == {0: "SUCCEEDED", 1: "FAILED", 2: "QUEUED"}

    # The one still held is deleted by stop, its Workload with it.
    code, out, err = await caliban(["stop", "--xgroup", "kq", "--yes"], cwd=folder, env=env)
    assert code == 0, err
    await wait_for(lambda: names_of(kube) == sorted([name[0], name[1]]))
    assert len(kube.kueue.workloads(NS)) == 2
    assert await states(folder, env, "kq") == {0: "SUCCEEDED", 1: "FAILED", 2: "STOPPED"}


async def test_an_indexed_sweep_is_one_workload_queued_then_running_then_succeeded(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    code, out, err = await caliban(
        submit(
            kubeconfig, folder, "--xgroup", "kqi", "--indexed", "--queue", "team-a", i=[1, 2, 3]
        ),
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    assert "3 job(s): 3 queued" in out
    (job,) = kube.jobs(NS)
    (workload,) = kube.kueue.workloads(NS)
    name = job["metadata"]["name"]
    assert job["spec"]["suspend"] is True and job["spec"]["completions"] == 3
    assert job["metadata"]["labels"][QUEUE] == "team-a"
    assert QUEUE not in job["spec"]["template"]["metadata"]["labels"]
    assert workload["metadata"]["ownerReferences"][0]["name"] == name
    assert await states(folder, env, "kqi") == {0: "QUEUED", 1: "QUEUED", 2: "QUEUED"}

    kube.admit_job(NS, name)
    kube.set_job_running(NS, name)
    assert await states(folder, env, "kqi") == {0: "RUNNING", 1: "RUNNING", 2: "RUNNING"}
    kube.succeed_index(NS, name, 1)
    assert await states(folder, env, "kqi") == {0: "RUNNING", 1: "SUCCEEDED", 2: "RUNNING"}
    kube.succeed_job(NS, name)
    assert await states(folder, env, "kqi") == {0: "SUCCEEDED", 1: "SUCCEEDED", 2: "SUCCEEDED"}


async def test_a_held_indexed_sweep_is_deleted_by_stop(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    code, _, err = await caliban(
        submit(kubeconfig, folder, "--xgroup", "kqs", "--indexed", "--queue", "q", i=[1, 2]),
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    assert await states(folder, env, "kqs") == {0: "QUEUED", 1: "QUEUED"}
    code, _, err = await caliban(["stop", "--xgroup", "kqs", "--yes"], cwd=folder, env=env)
    assert code == 0, err
    await wait_for(lambda: kube.jobs(NS) == [] and kube.configmaps(NS) == [])
    assert kube.kueue.workloads(NS) == [] and kube.kueue.admitted == []
    assert await states(folder, env, "kqs") == {0: "STOPPED", 1: "STOPPED"}


async def test_a_queue_with_capacity_admits_the_next_job_when_one_finishes(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    kube.kueue.capacity["team-a"] = 1
    code, _, err = await caliban(
        submit(kubeconfig, folder, "--xgroup", "kqc", "--queue", "team-a", i=[1, 2]),
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    recorded = await status(folder, env, "kqc")
    first = next(i for i, j in recorded.items() if j["state"] == "SUBMITTED")
    second = 1 - first
    assert recorded[second]["state"] == "QUEUED"
    assert "team-a" in str(recorded[second]["message"])
    kube.succeed_job(NS, str(recorded[first]["platform_id"]))
    assert await states(folder, env, "kqc") == {first: "SUCCEEDED", second: "SUBMITTED"}
    kube.succeed_job(NS, str(recorded[second]["platform_id"]))
    assert await states(folder, env, "kqc") == {first: "SUCCEEDED", second: "SUCCEEDED"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--queue", "Team_A"], "--queue 'Team_A' is not a Kubernetes object name"),
        (["--queue", "q", "--priority_class", "x" * 64], "--priority_class 'xxxx"),
        (["--priority_class", "high"], "--priority_class is a Kueue WorkloadPriorityClass"),
        (["--compute_class", "gpus"], "--compute_class selects a GKE ComputeClass"),
        (["-l", "kueue.x-k8s.io/queue-name=q"], "Kueue labels (kueue.x-k8s.io/...) are set"),
    ],
)
async def test_bad_kueue_input_is_one_line_exit_2_and_nothing_recorded(
    tmp_path: Path,
    folder: Path,
    kube: FakeKubernetes,
    kubeconfig: Path,
    env: dict[str, str],
    extra: list[str],
    message: str,
) -> None:
    code, out, err = await caliban(submit(kubeconfig, folder, *extra, i=[1]), cwd=folder, env=env)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # the message and, at most, its hint
    assert not (tmp_path / "home" / "caliban.db").exists()
    assert kube.creates_received == 0
