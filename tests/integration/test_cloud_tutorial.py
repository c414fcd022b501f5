"""tutorials/batch/submit_sweep.py, run as documented, against the local Vertex server whose
jobs move on by themselves (QUEUED -> PENDING -> RUNNING -> SUCCEEDED), some failing."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import anyio

from tests.conftest import CALIBAN, ROOT
from tests.fakes.vertex import FakeVertex
from tests.fakes.vertex_jobs import Lifecycle
from tests.integration.cloud_helpers import IMAGE, JOB_LABEL, cli_env

SCRIPT = ROOT / "tutorials" / "batch" / "submit_sweep.py"


async def test_batch_tutorial_submits_waits_and_tabulates(
    tmp_path: Path, service_account_file: Path, vertex_server: FakeVertex
) -> None:
    vertex_server.lifecycle = Lifecycle(queued=0.3, pending=0.3, running=2.0)
    env = cli_env(tmp_path, service_account_file, vertex_server)
    failing: set[str] = set()

    async def fail_seed_4() -> None:
        # Every job run with --seed 4 fails on the platform, as soon as it exists.
        while True:
            for job in vertex_server.jobs:
                if job.labels.get("seed") == "4" and job.name not in failing:
                    vertex_server.fail(job.name, 13, "worker exited with status 1")
                    failing.add(job.name)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(fail_seed_4)
        with anyio.fail_after(120):
            done = await anyio.run_process(
                [
                    sys.executable,
                    str(SCRIPT),
                    "--image_tag",
                    IMAGE,
                    "--xgroup",
                    "batch",
                    "--rate_limit",
                    "60000",
                    "--poll",
                    "0.5",
                    "--timeout",
                    "60",
                ],
                env=env,
                check=False,
            )
        tg.cancel_scope.cancel()
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 1, out + err  # some jobs failed
    assert "300 jobs, 300 to submit, 0 already there" in out
    assert "submitted 300 of 300 jobs to experiment group batch" in out
    assert "300/300 finished" in out
    assert len(vertex_server.jobs) == 300 and vertex_server.duplicates(JOB_LABEL) == {}
    assert len(failing) == 60

    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.strip().startswith("learning_rate")))
    assert lines[header].split() == ["learning_rate", "FAILED", "SUCCEEDED", "total"]
    rows = [line.split() for line in lines[header + 1 : header + 14]]
    assert len(rows) == 13 and rows[-1] == ["all", "60", "240", "300"]
    for row in rows[:-1]:
        assert re.fullmatch(r"[0-9.]+", row[0]) and row[1:] == ["5", "20", "25"], row
    assert "failed: --learning_rate" in out and "worker exited with status 1" in out
    # Polling a 300-job sweep costs one list call per poll, not one call per job.
    assert vertex_server.get_calls == 0
    assert vertex_server.list_calls < 40


async def test_the_readme_way_to_try_it_without_a_google_account(tmp_path: Path) -> None:
    """tutorials/batch/README.md: start the stand-in as a program, source its env, run."""
    import os
    import shlex
    import subprocess

    folder = tmp_path / "standin"
    server = await anyio.open_process(
        [sys.executable, "-m", "tests.fakes.local_vertex", str(folder), "--running", "0.5"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        with anyio.fail_after(60):
            while not (folder / "env").exists():
                assert server.returncode is None, "the stand-in exited"
                await anyio.sleep(0.1)
        env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
        for line in (folder / "env").read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0]
        with anyio.fail_after(120):
            done = await anyio.run_process(
                [
                    sys.executable, str(SCRIPT), "--jobs", "4", "--poll", "0.5",
                    "--rate_limit", "6000", "--image_tag", IMAGE,
                ],
                env=env,
                check=False,
            )  # fmt: skip
        out = done.stdout.decode()
        assert done.returncode == 0, out + done.stderr.decode()
        assert "4/4 finished" in out and "all" in out
        # What the README shows next: one job's output, through Cloud Logging.
        listed = await anyio.run_process([CALIBAN, "status", "--json"], env=env, check=False)
        first = json.loads(listed.stdout)[0]
        logs = await anyio.run_process([CALIBAN, "logs", first["job_id"]], env=env, check=False)
        assert logs.returncode == 0, logs.stderr.decode()
        printed = logs.stdout.decode().splitlines()
        assert printed == [f"started with arguments {' '.join(first['args'])}", "done"]

        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "missing.json")
        missing = await anyio.run_process(
            [sys.executable, str(SCRIPT), "--jobs", "1", "--image_tag", IMAGE], env=env, check=False
        )
        err = missing.stderr.decode()
        assert missing.returncode == 2 and "Traceback" not in err
        assert err.strip().endswith("does not exist") and len(err.strip().splitlines()) == 1
    finally:
        server.terminate()
        with anyio.fail_after(30):
            await server.wait()
