"""The real ``caliban`` console script against the local Kubernetes API server, through a
kubeconfig: sweeps, status, logs, stop, kill -9 and re-run, bad input."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
import pytest
import yaml

from tests.conftest import CALIBAN, MakeProject
from tests.fakes.k8s import FakeKubernetes

from .cluster_support import (
    JOB_LABEL,
    caliban,
    cli_env,
    names_of,
    submit_args,
    wait_for,
)


@pytest.fixture
def folder(make_project: MakeProject) -> Path:
    return make_project()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """What the ``caliban`` processes under test see: a private home, no ambient kubeconfig."""
    return cli_env(tmp_path)


def write_config(folder: Path, **values: list[object]) -> Path:
    path = folder / "exp.json"
    path.write_text(json.dumps(values))
    return path


async def status_json(
    folder: Path, env: dict[str, str], xgroup: str
) -> dict[int, dict[str, object]]:
    code, out, err = await caliban(
        ["status", "--xgroup", xgroup, "--max_jobs", "0", "--json"], cwd=folder, env=env
    )
    assert code == 0, err
    return {int(str(j["index"])): j for j in json.loads(out)}


async def test_a_cli_sweep_becomes_jobs_and_status_reflects_their_outcomes(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    config = write_config(folder, lr=[0.1, 0.2, 0.3, 0.4])
    code, out, err = await caliban(
        submit_args(
            kubeconfig, config, "--xgroup", "cli", "-l", "team=nlp", script=("--epochs", "2")
        ),
        cwd=folder,
        env=env,
    )
    assert code == 0, err
    assert "4 job(s): 4 submitted" in out
    jobs = kube.jobs("default")
    assert len(jobs) == 4 and kube.duplicates(JOB_LABEL) == {}
    args = sorted(j["spec"]["template"]["spec"]["containers"][0]["args"] for j in jobs)
    assert args == [["--epochs", "2", "--lr", str(v)] for v in (0.1, 0.2, 0.3, 0.4)]
    assert {j["metadata"]["labels"]["team"] for j in jobs} == {"nlp"}

    recorded = await status_json(folder, env, "cli")
    name = {i: str(j["platform_id"]) for i, j in recorded.items()}
    kube.succeed_job("default", name[0])
    kube.fail_job("default", name[1])
    kube.set_job_running("default", name[2])
    kube.set_job_log("default", name[2], "loss 0.5\n")
    states = {i: j["state"] for i, j in (await status_json(folder, env, "cli")).items()}
    assert states == {0: "SUCCEEDED", 1: "FAILED", 2: "RUNNING", 3: "SUBMITTED"}

    code, out, err = await caliban(["logs", str(recorded[2]["job_id"])[-8:]], cwd=folder, env=env)
    assert (code, out) == (0, "loss 0.5\n"), err

    code, out, err = await caliban(["stop", "--xgroup", "cli", "--yes"], cwd=folder, env=env)
    assert code == 0, err
    await wait_for(lambda: names_of(kube) == sorted([name[0], name[1]]))
    states = {i: j["state"] for i, j in (await status_json(folder, env, "cli")).items()}
    assert states == {0: "SUCCEEDED", 1: "FAILED", 2: "STOPPED", 3: "STOPPED"}

    # The failed one comes back as a new Job; the others are left alone.
    code, out, err = await caliban(["resubmit", "--xgroup", "cli", "--yes"], cwd=folder, env=env)
    assert code == 0, err
    assert len(kube.jobs("default")) == 5 and kube.duplicates(JOB_LABEL) == {}


async def test_cluster_pod_and_job_listings(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    code, _, err = await caliban(
        submit_args(kubeconfig, write_config(folder, i=[1, 2])), cwd=folder, env=env
    )
    assert code == 0, err
    first, second = names_of(kube)
    kube.succeed_job("default", first)
    code, out, err = await caliban(
        ["cluster", "job", "ls", "--kubeconfig", str(kubeconfig)], cwd=folder, env=env
    )
    assert code == 0, err
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert lines == {f"default/{first}": "SUCCEEDED", f"default/{second}": "SUBMITTED"}
    code, out, err = await caliban(
        ["cluster", "pod", "ls", "--kubeconfig", str(kubeconfig)], cwd=folder, env=env
    )
    assert code == 0, err
    assert sorted(line.split()[3] for line in out.splitlines()[1:]) == [first, second]


async def run_until_killed(
    args: list[str], *, cwd: Path, env: dict[str, str], ready: object
) -> None:
    """Start caliban, wait for ``ready()``, then SIGKILL it: no cleanup of any kind runs."""
    process = await anyio.open_process([CALIBAN, *args], cwd=cwd, env=env)
    try:
        await wait_for(ready, timeout=60)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await process.aclose()
    assert process.returncode == -signal.SIGKILL


async def test_a_rerun_after_kill_9_adds_only_the_missing_jobs(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    n = 200
    args = submit_args(
        kubeconfig, write_config(folder, i=list(range(n))), "--xgroup", "k9", "--max_inflight", "4"
    )
    kube.create_latency = 0.03
    await run_until_killed(args, cwd=folder, env=env, ready=lambda: kube.creates_accepted >= 60)
    await anyio.sleep(0.1)  # creates the server had already received finish storing
    survived = len(kube.jobs("default"))
    assert 60 <= survived < n
    kube.create_latency = 0.0
    code, _out, err = await caliban(args, cwd=folder, env=env)
    assert code == 0, err
    assert len(kube.jobs("default")) == n and kube.duplicates(JOB_LABEL) == {}
    assert kube.creates_accepted == n and kube.conflicts == 0
    assert {j["state"] for j in (await status_json(folder, env, "k9")).values()} == {"SUBMITTED"}


async def test_resubmit_after_kill_9_adds_only_the_missing_jobs(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    args = submit_args(
        kubeconfig,
        write_config(folder, i=list(range(40))),
        "--xgroup",
        "k9r",
        "--max_inflight",
        "2",
    )
    kube.create_latency = 0.05
    await run_until_killed(args, cwd=folder, env=env, ready=lambda: kube.creates_accepted >= 10)
    kube.create_latency = 0.0
    code, _out, err = await caliban(["resubmit", "--xgroup", "k9r", "--yes"], cwd=folder, env=env)
    assert code == 0, err
    assert len(kube.jobs("default")) == 40 and kube.duplicates(JOB_LABEL) == {}
    assert kube.creates_accepted == 40 and kube.conflicts == 0
    assert {j["state"] for j in (await status_json(folder, env, "k9r")).values()} == {"SUBMITTED"}


async def test_an_indexed_sweep_killed_between_configmap_and_job_is_completed(
    folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    args = submit_args(
        kubeconfig,
        write_config(folder, tag=["a", "b", "c", "d", "e"]),
        "--xgroup",
        "k9i",
        "--indexed",
    )
    kube.create_latency = 1.5  # the Job create comes 1.5 s after the ConfigMap is stored
    await run_until_killed(
        args, cwd=folder, env=env, ready=lambda: bool(kube.configmaps("default"))
    )
    assert kube.jobs("default") == []
    (left,) = kube.configmaps("default")
    assert "ownerReferences" not in left["metadata"]
    kube.create_latency = 0.0
    code, _out, err = await caliban(args, cwd=folder, env=env)
    assert code == 0, err
    assert kube.calls["create configmaps"] == 1  # the one left behind was adopted
    name = left["metadata"]["name"]
    assert kube.object_order == [("ConfigMap", name), ("Job", name)]
    (job,) = kube.jobs("default")
    (cm,) = kube.configmaps("default")
    assert cm["metadata"]["uid"] == left["metadata"]["uid"]
    assert [(o["kind"], o["name"], o["uid"]) for o in cm["metadata"]["ownerReferences"]] == [
        ("Job", job["metadata"]["name"], job["metadata"]["uid"])
    ]
    recorded = await status_json(folder, env, "k9i")
    entries = json.loads(cm["data"]["args.json"])
    assert len(entries) == job["spec"]["completions"] == 5
    for record in recorded.values():
        entry = entries[int(str(record["details"]["completion_index"]))]  # type: ignore[index]
        assert entry == {"job": record["job_id"], "args": record["args"]}
        assert record["state"] == "SUBMITTED"


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--context", "nope"], 2, "no context 'nope' in kubeconfig"),
        (["--gpu_spec", "2xQ9"], 2, "unknown GPU type 'Q9'"),
        (["--spot"], 2, "--spot selects GKE node labels"),
        (["--max_parallel", "3"], 2, "--max_parallel applies to --indexed"),
        (["--namespace", "missing"], 2, "namespace 'missing' does not exist"),
    ],
)
async def test_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path: Path,
    folder: Path,
    kubeconfig: Path,
    kube: FakeKubernetes,
    extra: list[str],
    code: int,
    message: str,
    env: dict[str, str],
) -> None:
    got, out, err = await caliban(
        submit_args(kubeconfig, write_config(folder, i=[1]), *extra), cwd=folder, env=env
    )
    assert got == code, (out, err)
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "home" / "caliban.db").exists()
    assert kube.creates_received == 0


async def test_missing_kubeconfig_and_unreachable_cluster(
    tmp_path: Path, folder: Path, kube: FakeKubernetes, env: dict[str, str]
) -> None:
    config = write_config(folder, i=[1])
    got, _, err = await caliban(submit_args(tmp_path / "absent.yaml", config), cwd=folder, env=env)
    assert got == 2 and "absent.yaml does not exist" in err and "Traceback" not in err
    # A cluster nobody answers for: a runtime failure (1), still before anything is recorded.
    port = kube.port
    await kube.close()
    dead = tmp_path / "dead.yaml"
    dead.write_text(f"""
apiVersion: v1
kind: Config
current-context: dead
clusters: [{{name: dead, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: dead, context: {{cluster: dead, user: u}}}}]
""")
    got, _, err = await caliban(submit_args(dead, config), cwd=folder, env=env)
    assert got == 1 and "cannot connect to http://127.0.0.1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "home" / "caliban.db").exists()


async def test_a_kubeconfig_cluster_needs_a_registry_to_push_to(
    folder: Path, kubeconfig: Path, env: dict[str, str]
) -> None:
    args = ["cluster", "job", "submit", "--kubeconfig", str(kubeconfig), "job.py"]
    got, _, err = await caliban(args, cwd=folder, env=env)
    assert got == 2 and "--image_registry" in err


async def test_dry_run_prints_manifests_and_touches_nothing(
    tmp_path: Path, folder: Path, kube: FakeKubernetes, kubeconfig: Path, env: dict[str, str]
) -> None:
    got, out, err = await caliban(
        [
            "cluster",
            "job",
            "submit",
            "--kubeconfig",
            str(kubeconfig),
            "--dry_run",
            "--experiment_config",
            str(write_config(folder, lr=[1, 2])),
            "job.py",
        ],
        cwd=folder,
        env=env,
    )
    assert got == 0, err
    # Piped stdout is a YAML stream of the manifests; the narration is on stderr.
    jobs = list(yaml.safe_load_all(out))
    assert [j["kind"] for j in jobs] == ["Job", "Job"]
    assert [j["spec"]["template"]["spec"]["containers"][0]["args"][-2:] for j in jobs] == [
        ["--lr", "1"],
        ["--lr", "2"],
    ]
    assert "dry run: 2 job(s)" in err
    assert kube.requests == [] and not (tmp_path / "home").exists()
