"""Helpers for the `caliban cloud` tests: requests, CLI runs next to the fakes, and the
"every job exactly once" check.

The fakes run in the test's own event loop, so a CLI under test must be started with
``anyio`` (never ``subprocess.run``, which would block the loop the fake answers from).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio

from caliban.options import CloudRequest, ProjectOptions
from caliban.spec import JobRecord
from tests.conftest import CALIBAN
from tests.fakes.vertex import FakeVertex

IMAGE = "us-central1-docker.pkg.dev/test-proj/caliban/app@sha256:" + "a" * 64
JOB_LABEL = "caliban_job"


def cloud_request(folder: Path, key: Path | None, vertex: FakeVertex, **kw: object) -> CloudRequest:
    """A request for ``folder/job.py`` with a ready image, fast pacing, the fake's endpoint."""
    base: dict[str, object] = dict(
        project=ProjectOptions(folder=folder, entry="job.py"),
        image_tag=IMAGE,
        cloud_key=str(key) if key else None,
        endpoint=vertex.url,
        rate_limit=6000,
        max_inflight=8,
    )
    base.update(kw)
    return CloudRequest(**base)  # type: ignore[arg-type]


def cli_env(
    tmp_path: Path, key: Path, vertex: FakeVertex, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for a `caliban` process talking to the fakes (on top of ``base``, e.g.
    the Docker-ready ``env`` fixture, else this process's environment)."""
    env = dict(os.environ if base is None else base)
    for var in ("CALIBAN_SIMULATED_GPUS", "PROJECT_ID", "REGION", "CLOUDSDK_CONFIG"):
        env.pop(var, None)
    env.update(
        CALIBAN_HOME=str(tmp_path / "home"),
        HOME=str(tmp_path),
        GOOGLE_APPLICATION_CREDENTIALS=str(key),
        CALIBAN_VERTEX_ENDPOINT=vertex.url,
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    return env


async def caliban(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real console script without blocking the loop the fakes serve from."""
    with anyio.fail_after(timeout):
        done = await anyio.run_process([CALIBAN, *args], cwd=cwd, env=env, check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def assert_exactly_once(vertex: FakeVertex, jobs: Sequence[JobRecord], expected: int) -> None:
    """No duplicate, no lost job: the server holds ``expected`` jobs, one per caliban job id,
    and every recorded job names the one server job that carries its id."""
    assert vertex.duplicates(JOB_LABEL) == {}
    remote = {j.labels[JOB_LABEL]: j for j in vertex.jobs}
    assert len(vertex.jobs) == expected, (len(vertex.jobs), expected)
    assert len(jobs) == expected
    for job in jobs:
        assert job.job_id in remote, f"job {job.job_id} ({job.state}) never reached the server"
        assert job.platform_id == remote[job.job_id].name, (job.job_id, job.state)


def db_jobs(home: Path, xgroup: str) -> list[tuple[str, str, str | None]]:
    """(job id, state, platform id) of every job of ``xgroup``, read straight from SQLite."""
    with sqlite3.connect(home / "caliban.db") as db:
        rows = db.execute(
            "SELECT j.id, j.state, j.platform_id FROM jobs j "
            "JOIN experiments e ON e.id = j.experiment_id JOIN xgroups x ON x.id = e.xgroup_id "
            "WHERE x.name = ? ORDER BY e.idx, j.created",
            (xgroup,),
        ).fetchall()
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]
