"""`caliban slurm submit --host root@localhost`: the login node over ssh, for real.

scripts/ssh-login.sh runs an sshd on 127.0.0.1 (its own port, host key and
authorized key, all in a root-only state folder) in front of the one-node
cluster. Nothing but the ssh configuration it writes says where
``localhost`` is: port 22 has no sshd. ssh reads the user's configuration
from the account's home (not $HOME), so the tests make that file the user's
with an ``ssh`` on PATH that adds ``-F FILE`` and notes each call; caliban's
argv is unchanged.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT, MakeProject, job_reports

from .slurm_support import (  # noqa: F401  (fixtures)
    all_ended,
    caliban,
    slurm_cluster,
    status,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SCRIPT = ROOT / "scripts" / "ssh-login.sh"
HOST = "root@localhost"


@pytest.fixture(scope="session")
def ssh_login(slurm_cluster: None) -> Iterator[Path]:
    """The state folder of the test login node; a skip is a failure in CI."""
    started = subprocess.run(
        [str(SCRIPT), "start"], capture_output=True, text=True, timeout=600, check=False
    )
    if started.returncode != 0:
        reason = f"cannot start the test sshd: {started.stderr.strip()[-1000:]}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    yield Path(os.environ.get("CALIBAN_SSHD_DIR", "/tmp/caliban-sshd"))


@pytest.fixture
def ssh_env(env: dict[str, str], ssh_login: Path, tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "ssh-bin"
    bin_dir.mkdir()
    real = next(
        p / "ssh" for p in map(Path, env["PATH"].split(os.pathsep)) if (p / "ssh").is_file()
    )
    ssh = bin_dir / "ssh"
    ssh.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >>"{tmp_path}/ssh-calls"\n'
        f'exec "{real}" -F "{ssh_login}/ssh_config" "$@"\n'
    )
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "ssh-calls"
    return path.read_text().splitlines() if path.exists() else []


def _submit(config: Path, xgroup: str, remote: Path, *extra: str) -> list[str]:
    return [
        "slurm", "submit", "--host", HOST, "--slurm_dir", str(remote), "--nogpu",
        "--experiment_config", str(config), "--xgroup", xgroup, *extra, "job.py",
    ]  # fmt: skip


async def test_a_sweep_goes_through_the_login_node(
    make_project: MakeProject, ssh_env: dict[str, str], tmp_path: Path
) -> None:
    folder = make_project()
    config = folder / "exp.json"
    config.write_text(json.dumps([{"tag": ["a", "b"]}, {"tag": "c", "exit": 3}]))
    remote = tmp_path / "on-the-cluster"
    code, out, err = await caliban(_submit(config, "sshx", remote), cwd=folder, env=ssh_env)
    assert code == 0, err + out
    # The image went over ssh once, as the nodes of a remote cluster load it.
    (archive,) = (remote / "images").glob("*.tar")
    assert archive.stat().st_size > 0
    assert any("-- sbatch --parsable" in c for c in _calls(tmp_path))
    jobs = await wait_until(folder, ssh_env, "sshx", all_ended)
    assert [(j["state"], j["exit_code"]) for j in jobs] == [
        ("SUCCEEDED", 0),
        ("SUCCEEDED", 0),
        ("FAILED", 3),
    ]
    assert {j["details"]["cluster"] for j in jobs} == {HOST}  # type: ignore[index]
    # Refresh, logs and results read the cluster through ssh too.
    before = len(_calls(tmp_path))
    for job, tag in zip(jobs, ("a", "b", "c"), strict=True):
        code, out, err = await caliban(["logs", str(job["job_id"])], cwd=folder, env=ssh_env)
        assert code == 0, err
        (report,) = job_reports(out)
        assert (report["job"], report["tag"]) == (job["job_id"], tag)
    code, out, err = await caliban(
        ["results", "--xgroup", "sshx", "--json"], cwd=folder, env=ssh_env
    )
    assert code == 0, err + out
    assert sorted(r["tag"] for r in json.loads(out)) == ["a", "b", "c"]
    assert any(".log " in c for c in _calls(tmp_path)[before:])
    # Without the user's ssh configuration, localhost is port 22, where nothing
    # listens: the cluster is unreachable, and says so.
    code, out, err = await caliban(
        ["logs", str(jobs[0]["job_id"])], cwd=folder, env={**ssh_env, "PATH": os.environ["PATH"]}
    )
    assert code == 1, err + out
    assert f"cannot reach {HOST} over ssh" in err


async def test_stop_cancels_over_ssh(
    make_project: MakeProject, ssh_env: dict[str, str], tmp_path: Path
) -> None:
    folder = make_project()
    config = folder / "exp.json"
    config.write_text(json.dumps({"tag": ["a", "b"]}))
    remote = tmp_path / "on-the-cluster"
    args = _submit(config, "sshstop", remote, "--max_parallel", "1")
    code, out, err = await caliban([*args, "--", "--sleep", "300"], cwd=folder, env=ssh_env)
    assert code == 0, err + out
    await wait_until(
        folder, ssh_env, "sshstop", lambda js: any(j["state"] == "RUNNING" for j in js)
    )
    code, out, err = await caliban(
        ["stop", "--xgroup", "sshstop", "--yes"], cwd=folder, env=ssh_env
    )
    assert code == 0, err + out
    assert any(c.split(" -- ", 1)[-1].startswith("scancel") for c in _calls(tmp_path))
    jobs = await status(folder, ssh_env, "sshstop")
    assert [j["state"] for j in jobs] == ["STOPPED", "STOPPED"]


async def test_an_oci_sweep_goes_through_the_login_node(
    make_project: MakeProject, ssh_env: dict[str, str], tmp_path: Path
) -> None:
    folder = make_project()
    config = folder / "exp.json"
    config.write_text(json.dumps({"exit": [0, 4]}))
    remote = tmp_path / "on-the-cluster"
    args = _submit(config, "sshoci", remote, "--runtime", "oci")
    code, out, err = await caliban(args, cwd=folder, env=ssh_env)
    assert code == 0, err + out
    # The image's files went over ssh into tar on the login node, once.
    untars = [c for c in _calls(tmp_path) if "-- tar -C" in c]
    assert len(untars) == 1, _calls(tmp_path)
    (bundle,) = (remote / "bundles").iterdir()
    assert (bundle / "rootfs" / "usr" / "bin").is_dir() and (bundle / "config.json").is_file()
    assert not (remote / "images").exists()  # no docker save for the OCI path
    jobs = await wait_until(folder, ssh_env, "sshoci", all_ended)
    assert [(j["state"], j["exit_code"]) for j in jobs] == [("SUCCEEDED", 0), ("FAILED", 4)]
    code, out, err = await caliban(["logs", str(jobs[0]["job_id"])], cwd=folder, env=ssh_env)
    assert code == 0, err
    (report,) = job_reports(out)
    assert report["job"] == jobs[0]["job_id"]
