"""Ctrl-C, SIGTERM, kill -9 and `caliban stop` in the middle of a real sweep."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    CALIBAN,
    RUN_ID,
    TEST_LABEL,
    MakeProject,
    docker_cli,
    labelled_containers,
    run_cli,
    store_id,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _states(home: Path, xgroup: str) -> list[str]:
    with sqlite3.connect(home / "caliban.db") as db:
        rows = db.execute(
            "SELECT j.state FROM jobs j JOIN experiments e ON e.id = j.experiment_id "
            "JOIN xgroups x ON x.id = e.xgroup_id WHERE x.name = ? ORDER BY e.idx, j.created",
            (xgroup,),
        ).fetchall()
    return [r[0] for r in rows]


def _recorded_running(home: Path) -> int:
    """Jobs recorded RUNNING: a running container may also be a pre-warmed one
    still waiting behind its gate."""
    with sqlite3.connect(home / "caliban.db") as db:
        return int(db.execute("SELECT count(*) FROM jobs WHERE state = 'RUNNING'").fetchone()[0])


def _wait_running(home: Path, count: int, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (home / "caliban.db").exists():
            try:
                store = store_id(home)
            except (sqlite3.Error, LookupError):  # still being created
                store = ""
            running = docker_cli(
                "ps", "-q", "--filter", f"label=caliban.store={store}", "--filter", "status=running"
            ).split()
            if store and len(running) >= count and _recorded_running(home) >= count:
                return store
        time.sleep(0.2)
    raise AssertionError(f"{count} containers never started")


def _running_jobs_have_containers(home: Path, store: str, running: int) -> None:
    """The store's containers are those of its ``running`` RUNNING jobs, plus, with
    pre-warmed slots, gated ones of PLANNED jobs that wait to be released."""
    with sqlite3.connect(home / "caliban.db") as db:
        states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    rows = docker_cli(
        "ps", "-a", "--filter", f"label=caliban.store={store}",
        "--format", '{{.Label "caliban.job"}} {{.Label "caliban.gate"}}',
    ).splitlines()  # fmt: skip
    gated = {job: mark == "1" for job, _, mark in (row.partition(" ") for row in rows)}
    started = sorted(j for j, s in states.items() if s == "RUNNING")
    assert len(started) == running
    assert sorted(j for j in gated if states[j] == "RUNNING") == started
    for job, is_gated in gated.items():
        assert states[job] == "RUNNING" or (states[job] == "PLANNED" and is_gated), (job, states)


def _wait_exited(store: str, timeout: float = 120) -> None:
    """Until no container of the store is running (they end on their own, at the engine's pace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = docker_cli(
            "ps", "-q", "--filter", f"label=caliban.store={store}", "--filter", "status=running"
        ).split()
        if not running:
            return
        time.sleep(0.2)
    raise AssertionError("the orphaned containers never ended")


def _start_sweep(
    folder: Path, env: dict[str, str], xgroup: str, n: int = 4
) -> subprocess.Popen[str]:
    config = folder / "sweep.json"
    config.write_text(json.dumps({"tag": [str(i) for i in range(n)]}))
    return subprocess.Popen(
        [
            CALIBAN,
            "run",
            "--experiment_config",
            str(config),
            "--xgroup",
            xgroup,
            "--max_parallel",
            "2",
            "job.py",
            "--",
            "--sleep",
            "60",
        ],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_and_removes_every_container(
    make_project: MakeProject, env: dict[str, str], home: Path, sig: signal.Signals
) -> None:
    folder = make_project()
    proc = _start_sweep(folder, env, "interrupted")
    store = _wait_running(home, 2)
    started = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    # Stopped within the grace period, not after the 60 s sleep.
    assert time.monotonic() - started < 30
    assert labelled_containers(**{"caliban.store": store}) == []
    assert _states(home, "interrupted") == ["STOPPED"] * 4
    assert "resubmit" in out


def test_second_ctrl_c_skips_the_grace_period(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    folder = make_project(
        {
            "stubborn.py": "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ignoring SIGTERM', flush=True)\ntime.sleep(60)\n"
        }
    )
    proc = subprocess.Popen(
        [CALIBAN, "run", "--xgroup", "stubborn", "stubborn.py"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    store = _wait_running(home, 1)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert time.monotonic() - started < 8  # well under the 10 s grace period
    assert labelled_containers(**{"caliban.store": store}) == []
    assert _states(home, "stubborn") == ["STOPPED"]


def test_kill_9_then_status_and_rerun_lose_nothing(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    """After kill -9 the orphaned containers keep running; `status` records how
    they end, and re-running the command runs only what never ran."""
    folder = make_project()
    config = folder / "sweep.json"
    config.write_text(json.dumps({"tag": ["a", "b", "c", "d"]}))
    args = [
        "run",
        "--experiment_config",
        str(config),
        "--xgroup",
        "crash",
        "--max_parallel",
        "2",
        "job.py",
        "--",
        "--sleep",
        "3",
    ]
    proc = subprocess.Popen(
        [CALIBAN, *args], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    store = _wait_running(home, 2)
    proc.kill()
    proc.wait()
    assert _states(home, "crash").count("RUNNING") == 2
    _running_jobs_have_containers(home, store, 2)

    _wait_exited(store)  # the orphans finish on their own
    status = run_cli(["status", "--xgroup", "crash", "--json"], cwd=folder, env=env)
    assert status.returncode == 0, status.stderr
    jobs = json.loads(status.stdout)
    assert sorted(j["state"] for j in jobs) == ["PLANNED", "PLANNED", "SUCCEEDED", "SUCCEEDED"]
    assert labelled_containers(**{"caliban.store": store}) == []
    finished = [j for j in jobs if j["state"] == "SUCCEEDED"]
    assert all("tag" in Path(j["log_path"]).read_text() for j in finished)

    rerun = run_cli(args, cwd=folder, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _states(home, "crash") == ["SUCCEEDED"] * 4  # 4 jobs, none twice


def test_stop_from_another_terminal(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    folder = make_project()
    proc = _start_sweep(folder, env, "stopme", n=3)
    store = _wait_running(home, 2)
    dry = run_cli(["stop", "--xgroup", "stopme", "--dry_run"], cwd=folder, env=env)
    assert dry.returncode == 0 and "3 job(s) would be stopped" in dry.stdout
    _running_jobs_have_containers(home, store, 2)

    # Piped stdin is no terminal: caliban refuses to guess (tests/integration/
    # test_cli_helps.py answers at a real prompt).
    refused = run_cli(["stop", "--xgroup", "stopme"], cwd=folder, env=env, stdin="y\n")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    _running_jobs_have_containers(home, store, 2)

    stopped = run_cli(["stop", "--xgroup", "stopme", "--yes"], cwd=folder, env=env)
    assert stopped.returncode == 0, stopped.stderr
    out, _ = proc.communicate(timeout=60)
    # The run saw its jobs stopped (not failed) and ended without starting the queued one.
    assert _states(home, "stopme") == ["STOPPED"] * 3, out
    assert proc.returncode == 1
    assert labelled_containers(**{"caliban.store": store}) == []


def test_a_container_created_but_never_started_is_settled_by_status(
    make_project: MakeProject, env: dict[str, str], home: Path, base_image: str
) -> None:
    """The window a kill -9 can hit between create and start: the job was recorded
    RUNNING, its container exists but never ran. `status` records it STOPPED (so the
    same command runs it again) and removes the container."""
    folder = make_project()
    done = run_cli(["run", "--xgroup", "gate", "job.py"], cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    store = store_id(home)
    with sqlite3.connect(home / "caliban.db") as db:
        (job_id,) = db.execute("SELECT id FROM jobs").fetchone()
        db.execute("UPDATE jobs SET state = 'RUNNING', claimed_by = NULL WHERE id = ?", (job_id,))
    docker_cli(
        "create",
        "--name",
        f"caliban-{job_id}",
        "--label",
        f"caliban.store={store}",
        "--label",
        f"caliban.job={job_id}",
        "--label",
        f"{TEST_LABEL}={RUN_ID}",
        base_image,
        "true",
    )
    status = run_cli(["status", "--xgroup", "gate", "--json"], cwd=folder, env=env)
    assert status.returncode == 0, status.stderr
    (job,) = json.loads(status.stdout)
    assert job["state"] == "STOPPED"
    assert "never started" in str(job["message"])
    assert labelled_containers(**{"caliban.store": store}) == []
