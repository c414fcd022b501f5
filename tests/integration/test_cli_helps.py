"""The CLI as a script or a person meets it: `--json` summaries that parse, and
`stop`/`resubmit` that refuse to guess when nobody can answer their question.

Against the local Vertex and Kubernetes servers (no Docker needed: images are given)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from tests.conftest import CALIBAN, MakeProject
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.vertex import FakeVertex
from tests.integration import cluster_support
from tests.integration.cloud_helpers import IMAGE, cli_env


async def cli(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The console script with no terminal on stdin, or (``answer``) with one that
    types ``answer`` at the prompt."""

    def run() -> subprocess.CompletedProcess[str]:
        if answer is None:
            return subprocess.run(
                [CALIBAN, *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        master, slave = os.openpty()
        try:
            os.write(master, answer.encode() + b"\n")
            return subprocess.run(
                [CALIBAN, *args],
                cwd=cwd,
                env=env,
                stdin=slave,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            os.close(slave)
            os.close(master)

    return await anyio.to_thread.run_sync(run)


def _cloud(folder: Path, n: int, *extra: str) -> list[str]:
    sweep = folder / "sweep.json"
    sweep.write_text(json.dumps({"lr": [0.1 * (i + 1) for i in range(n)]}))
    return ["cloud", "--experiment_config", str(sweep), "--image_tag", IMAGE, *extra, "job.py"]


async def test_cloud_json_then_stop_and_resubmit_without_a_terminal(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
) -> None:
    folder = make_project()
    env = cli_env(tmp_path, service_account_file, vertex_server)

    done = await cli(_cloud(folder, 3, "--xgroup", "js", "--json"), cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # the whole of stdout: one document
    assert summary["xgroup"] == "js" and summary["ok"] is True
    assert summary["counts"] == {"submitted": 3}
    assert [j["state"] for j in summary["jobs"]] == ["SUBMITTED"] * 3
    ids = [j["job_id"] for j in summary["jobs"]]
    assert ids == sorted(ids)
    assert all(j["job_id"].endswith(j["short_id"]) for j in summary["jobs"])
    assert len({j["short_id"][0] for j in summary["jobs"]}) > 1 or len(ids) < 3
    assert "job(s) in experiment group js" in done.stderr  # progress, on stderr

    stop = await cli(["stop", "--xgroup", "js"], cwd=folder, env=env)
    assert stop.returncode == 2, stop.stdout + stop.stderr
    lines = stop.stderr.strip().splitlines()
    assert len(lines) == 1 and "no terminal" in lines[0] and "--yes" in lines[0], lines
    assert vertex_server.cancel_calls == 0

    declined = await cli(["stop", "--xgroup", "js"], cwd=folder, env=env, answer="n")
    assert declined.returncode == 0, declined.stderr
    assert "not stopped: the answer was not yes" in declined.stdout
    assert vertex_server.cancel_calls == 0

    vertex_server.fail(vertex_server.jobs[0].name, 13, "exit status 1")
    again = await cli(["resubmit", "--xgroup", "js"], cwd=folder, env=env)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "`caliban resubmit` would resubmit 1 job(s)" in again.stderr
    assert len(vertex_server.jobs) == 3

    declined = await cli(["resubmit", "--xgroup", "js"], cwd=folder, env=env, answer="no")
    assert declined.returncode == 0, declined.stderr
    assert "nothing resubmitted: the answer was not yes" in declined.stdout
    assert len(vertex_server.jobs) == 3

    yes = await cli(["resubmit", "--xgroup", "js", "--yes"], cwd=folder, env=env)
    assert yes.returncode == 0, yes.stderr
    assert len(vertex_server.jobs) == 4

    stopped = await cli(["stop", "--xgroup", "js"], cwd=folder, env=env, answer="y")
    assert stopped.returncode == 0, stopped.stderr
    assert vertex_server.cancel_calls == 3


async def test_quiet_leaves_the_summary_only(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
) -> None:
    folder = make_project()
    env = cli_env(tmp_path, service_account_file, vertex_server)
    loud = await cli(_cloud(folder, 2, "--xgroup", "loud"), cwd=folder, env=env)
    quiet = await cli(["-q", *_cloud(folder, 2, "--xgroup", "quiet")], cwd=folder, env=env)
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert "job(s) in experiment group loud" in loud.stdout
    assert "experiment group" not in quiet.stdout + quiet.stderr
    assert "2 job(s): 2 submitted" in quiet.stdout


async def test_cluster_job_submit_json(
    tmp_path: Path,
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
) -> None:
    folder = make_project()
    env = cluster_support.cli_env(tmp_path)
    config = folder / "exp.json"
    config.write_text(json.dumps({"lr": [0.1, 0.2]}))
    args = [
        "cluster",
        "job",
        "submit",
        "--kubeconfig",
        str(kubeconfig),
        "--image_tag",
        cluster_support.IMAGE,
        "--experiment_config",
        str(config),
        "--xgroup",
        "kj",
        "--json",
        "job.py",
    ]
    done = await cli(args, cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["xgroup"] == "kj" and summary["platform"] == "gke"
    assert summary["counts"] == {"submitted": 2}
    names = {j["platform_id"] for j in summary["jobs"]}
    assert names == {j["metadata"]["name"] for j in kube.jobs("default")}

    listed = await cli(
        ["cluster", "job", "ls", "--kubeconfig", str(kubeconfig), "--json"], cwd=folder, env=env
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["job"].split("/")[-1] for r in rows} >= names


@pytest.mark.parametrize("command", [["stop"], ["resubmit", "--xgroup", "nothing-here"]])
async def test_nothing_to_ask_about_is_not_an_error_without_a_terminal(
    tmp_path: Path, make_project: MakeProject, command: list[str]
) -> None:
    folder = make_project()
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    done = await cli(command, cwd=folder, env=env)
    if command[0] == "stop":
        assert done.returncode == 0 and "no running jobs to stop" in done.stdout, done.stderr
    else:
        assert done.returncode == 2 and "no experiment group" in done.stderr
