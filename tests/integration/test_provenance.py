"""Provenance through the real CLI: a project in a real git repository, run locally
(real Docker) and submitted to the local Vertex stand-in."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from tests.conftest import MakeProject, job_reports, run_cli
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import IMAGE, caliban, cli_env


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _repo(folder: Path) -> str:
    _git(folder, "init", "-q", "-b", "main")
    _git(folder, "add", "-A")
    _git(
        folder,
        "-c", "user.name=t", "-c", "user.email=t@example.com",
        "commit", "-q", "-m", "first",
    )  # fmt: skip
    return _git(folder, "rev-parse", "HEAD")


def test_a_local_run_records_where_its_code_came_from_and_show_reruns_it(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    commit = _repo(folder)
    (folder / "job.py").write_text((folder / "job.py").read_text() + "\n# an edit\n")
    sweep = folder / "sweep.json"
    sweep.write_text(json.dumps({"tag": ["a", "b"]}))
    run = run_cli(
        [
            "run",
            "--experiment_config",
            "sweep.json",
            "--xgroup",
            "prov",
            "job.py",
            "--",
            "--x",
            "1",
        ],
        cwd=folder,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    status = run_cli(["status", "--xgroup", "prov", "--json"], cwd=folder, env=env)
    jobs = json.loads(status.stdout)
    assert len(jobs) == 2
    origin = jobs[0]["provenance"]
    assert origin == jobs[1]["provenance"]
    assert origin["git"]["commit"] == commit and origin["git"]["branch"] == "main"
    assert origin["git"]["dirty"] is True and len(origin["git"]["diff_sha256"]) == 64
    assert origin["image"] == jobs[0]["image"] and origin["image_id"].startswith("sha256:")
    assert origin["base_image"] == env["CALIBAN_BASE_IMAGE"]
    assert str(origin["base_image_digest"]).startswith("sha256:")
    assert origin["command"][:2] == ["caliban", "run"] and origin["command"][-2:] == ["--x", "1"]
    from caliban.version import __version__

    assert origin["caliban_version"] == __version__

    job = jobs[1]
    shown = run_cli(["show", job["job_id"][-8:]], cwd=folder, env=env)
    assert shown.returncode == 0, shown.stderr
    assert commit in shown.stdout and "dirty" in shown.stdout
    rerun_line = next(line for line in shown.stdout.splitlines() if line.startswith("rerun"))
    as_json = json.loads(run_cli(["show", job["job_id"], "--json"], cwd=folder, env=env).stdout)
    assert rerun_line.split(None, 1)[1] == as_json["rerun"]

    # The rerun command runs that one job again, with its arguments, in its image.
    argv = shlex.split(as_json["rerun"])
    assert argv[0] == "caliban" and "--experiment_config" not in argv
    again = run_cli(argv[1:], cwd=folder, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    reports = job_reports(again.stdout)
    assert len(reports) == 1 and reports[0]["tag"] == job["kwargs"]["tag"] == "b"
    assert reports[0]["rest"] == ["--x", "1"]


def test_no_git_is_no_error(make_project: MakeProject, env: dict[str, str]) -> None:
    folder = make_project()
    run = run_cli(["run", "--xgroup", "nogit", "job.py"], cwd=folder, env=env)
    assert run.returncode == 0, run.stderr
    jobs = json.loads(
        run_cli(["status", "--xgroup", "nogit", "--json"], cwd=folder, env=env).stdout
    )
    assert jobs[0]["provenance"]["git"] is None


async def test_vertex_jobs_carry_the_short_commit_as_a_label(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
) -> None:
    folder = make_project()
    commit = _repo(folder)
    env = cli_env(tmp_path, service_account_file, vertex_server)
    done = await caliban(
        ["cloud", "--image_tag", IMAGE, "--xgroup", "lab", "job.py"], cwd=folder, env=env
    )
    assert done.returncode == 0, done.stderr
    assert [j.labels["caliban_commit"] for j in vertex_server.jobs] == [commit[:12]]
    status = await caliban(["status", "--xgroup", "lab", "--json"], cwd=folder, env=env)
    origin = json.loads(status.stdout)[0]["provenance"]
    assert origin["git"] == {
        "commit": commit,
        "branch": "main",
        "dirty": False,
        "diff_sha256": None,
    }
    assert origin["image"] == IMAGE and origin["image_digest"] == IMAGE.rsplit("@", 1)[1]
