"""The one-node Slurm cluster of scripts/slurm-cluster.sh, for the Slurm tests.

Every array the tests submit carries the run's label in its comment
(``caliban.test=<run id>``, from CALIBAN_LABELS), so cleanup cancels those and
nothing else on the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.conftest import CALIBAN, IN_CI, ROOT, RUN_ID, TEST_LABEL

SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"
MARK = f"{TEST_LABEL}={RUN_ID}"


def squeue() -> list[dict[str, object]]:
    out = subprocess.run(
        ["squeue", "--json"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    jobs: list[dict[str, object]] = json.loads(out)["jobs"]
    return jobs


def ours() -> list[dict[str, object]]:
    """This run's Slurm jobs (array tasks and pending array records)."""
    return [j for j in squeue() if MARK in str(j.get("comment", ""))]


@pytest.fixture(scope="session")
def slurm_cluster(docker_engine: None) -> Iterator[None]:
    """The local cluster, started if needed; a skip is a failure in CI."""
    if os.geteuid() != 0:
        reason = "the local Slurm cluster needs root (slurmd runs docker)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    started = subprocess.run(
        [str(SCRIPT), "start"], capture_output=True, text=True, timeout=600, check=False
    )
    if started.returncode != 0:
        reason = f"cannot start the local Slurm cluster: {started.stderr.strip()[-1000:]}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield
    finally:
        left = sorted({str(j["job_id"]) for j in ours()})
        if left:
            subprocess.run(["scancel", *left], capture_output=True, timeout=60, check=False)


async def caliban(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600
) -> tuple[int, str, str]:
    with anyio.fail_after(timeout):
        result = await anyio.run_process([CALIBAN, *args], cwd=cwd, env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def status(folder: Path, env: dict[str, str], xgroup: str) -> list[dict[str, object]]:
    code, out, err = await caliban(
        ["status", "--xgroup", xgroup, "--max_jobs", "0", "--json"], cwd=folder, env=env
    )
    assert code == 0, err
    jobs: list[dict[str, object]] = json.loads(out)
    return sorted(jobs, key=lambda j: (int(str(j["index"])), str(j["created"])))


async def wait_until(
    folder: Path, env: dict[str, str], xgroup: str, done: object, timeout: float = 300
) -> list[dict[str, object]]:
    """Refresh through `caliban status` until ``done(jobs)``."""
    # Polling on purpose: Slurm tells nobody when a task ends; status asks it.
    with anyio.fail_after(timeout):
        while True:
            jobs = await status(folder, env, xgroup)
            if done(jobs):  # type: ignore[operator]
                return jobs
            await anyio.sleep(1)


def all_ended(jobs: list[dict[str, object]]) -> bool:
    return bool(jobs) and all(j["state"] in ("SUCCEEDED", "FAILED", "STOPPED") for j in jobs)


def overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in points:  # ends sort before starts at the same instant
        now += step
        best = max(best, now)
    return best
