"""``caliban logs``, ``stop`` and ``status`` of local jobs through the standard library.

With the engine on its Unix socket and no run in the process, these commands
talk to it with :mod:`caliban.platforms.local.quick` instead of aiodocker:
the same answers (log text, list entries, errors), the same effects (a job
stopped, a dead run's job settled, its container removed), and neither
aiodocker nor aiohttp imported. Every container here carries ``caliban.test``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import aiodocker
import anyio
import pytest

from caliban.adapters.enginequick import EngineError, local_socket
from caliban.platforms.local.containers import DockerEngine
from caliban.platforms.local.quick import QuickContainer, QuickEngine
from tests.conftest import (
    CALIBAN,
    RUN_ID,
    TEST_LABEL,
    MakeProject,
    docker_cli,
    run_cli,
    store_containers,
)
from tests.unit.test_startup_imports import loaded_by

pytestmark = [pytest.mark.docker]

ENGINE_CLIENT = ("aiodocker", "aiohttp")

# Output on both streams and a character of several bytes, then a pause.
CHATTY_PY = """\
import sys, time
print("one: caf\\u00e9", flush=True)
print("two on stderr", file=sys.stderr, flush=True)
print("three", flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
print("last", flush=True)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""
EXPECTED = "one: café\ntwo on stderr\nthree\n"


def _lines(text: str) -> list[str]:
    # The engine copies stdout and stderr apart: lines of one stream keep their
    # order, the two streams' lines need not.
    return sorted(text.splitlines(keepends=True))


def _jobs(home: Path) -> dict[str, tuple[str, int | None]]:
    with sqlite3.connect(home / "caliban.db") as db:
        rows = db.execute("SELECT id, state, exit_code FROM jobs").fetchall()
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}


def _running(home: Path) -> str:
    """The id of the one job under ``home`` once it is recorded RUNNING and its
    container runs."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (home / "caliban.db").exists():
            try:
                jobs = _jobs(home)
                containers = store_containers(home)
            except (sqlite3.Error, LookupError):  # the store is being made
                jobs, containers = {}, []
            running = [j for j, (state, _) in jobs.items() if state == "RUNNING"]
            if running and containers:
                state = docker_cli("inspect", "-f", "{{.State.Status}}", containers[0])
                if state.strip() == "running":
                    return running[0]
        time.sleep(0.2)
    raise AssertionError("the job never ran")


def _launch(folder: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    (folder / "chatty.py").write_text(CHATTY_PY)
    return subprocess.Popen(
        [CALIBAN, "run", "--xgroup", "quick", "chatty.py", "--", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _orphan(folder: Path, env: dict[str, str], home: Path, *args: str) -> str:
    """A job whose run was killed (kill -9) while its container runs, once the
    container has written what comes before its pause."""
    proc = _launch(folder, env, *args)
    try:
        job_id = _running(home)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while "three" not in docker_cli("logs", f"caliban-{job_id}", check=False):
        assert time.monotonic() < deadline, "the job never wrote its first lines"
        time.sleep(0.1)
    return job_id


def _no_engine_client(seen: dict[str, object]) -> None:
    modules = seen["modules"]
    assert isinstance(modules, list) and "caliban" in modules
    assert [m for m in ENGINE_CLIENT if m in modules] == []


@pytest.mark.usefixtures("remove_leftovers")
def test_logs_of_a_running_job_read_the_engine_without_aiodocker(
    make_project: MakeProject, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    folder = make_project()
    job_id = _orphan(folder, env, home, "300")
    shown = run_cli(["logs", job_id], cwd=folder, env=env)
    assert shown.returncode == 0, shown.stderr
    assert _lines(shown.stdout) == _lines(EXPECTED)

    seen = loaded_by(["logs", job_id], tmp_path, env, cwd=folder)
    assert seen["code"] == 0, seen
    _no_engine_client(seen)


@pytest.mark.usefixtures("remove_leftovers")
def test_logs_follow_streams_until_the_container_exits(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    folder = make_project()
    job_id = _orphan(folder, env, home, "3")
    started = time.monotonic()
    followed = run_cli(["logs", "--follow", job_id], cwd=folder, env=env, timeout=60)
    assert followed.returncode == 0, followed.stderr
    # What came after the sleep arrived on the same stream, which ended with the job.
    assert _lines(followed.stdout) == _lines(EXPECTED + "last\n")
    assert followed.stdout.endswith("last\n")
    assert time.monotonic() - started < 30


@pytest.mark.usefixtures("remove_leftovers")
def test_status_settles_a_dead_runs_job_without_aiodocker(
    make_project: MakeProject, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    folder = make_project()
    job_id = _orphan(folder, env, home, "4", "3")
    docker_cli("wait", f"caliban-{job_id}")
    assert _jobs(home)[job_id] == ("RUNNING", None)

    seen = loaded_by(["status"], tmp_path, env, cwd=folder)
    assert seen["code"] == 0, seen
    _no_engine_client(seen)
    # Its exit code recorded, its output saved, its container removed: as with aiodocker.
    assert _jobs(home)[job_id] == ("FAILED", 3)
    assert store_containers(home) == []
    shown = run_cli(["logs", job_id], cwd=folder, env=env)
    assert shown.returncode == 0 and _lines(shown.stdout) == _lines(EXPECTED + "last\n")


@pytest.mark.usefixtures("remove_leftovers")
def test_stop_of_a_live_runs_job_without_aiodocker(
    make_project: MakeProject, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    folder = make_project()
    proc = _launch(folder, env, "300")
    try:
        job_id = _running(home)
        seen = loaded_by(["stop", "--xgroup", "quick", "--yes"], tmp_path, env, cwd=folder)
        assert seen["code"] == 0, seen
        _no_engine_client(seen)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # The run saw its job stopped, not failed, and the container is gone.
    assert _jobs(home)[job_id][0] == "STOPPED", err
    assert proc.returncode == 1
    assert store_containers(home) == []


@pytest.mark.usefixtures("remove_leftovers")
def test_stop_of_a_dead_runs_job(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    folder = make_project()
    job_id = _orphan(folder, env, home, "300")
    stopped = run_cli(["stop", "--yes"], cwd=folder, env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "xgroup quick" in stopped.stdout and " STOPPED " in stopped.stdout
    assert _jobs(home)[job_id][0] == "STOPPED"
    assert store_containers(home) == []


@pytest.mark.usefixtures("remove_leftovers")
def test_stop_removes_the_container_of_a_finished_job(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    folder = make_project()
    job_id = _orphan(folder, env, home, "300")
    # Recorded as ended while its container is still there (a run interrupted in cleanup).
    with sqlite3.connect(home / "caliban.db") as db:
        db.execute("UPDATE jobs SET state = 'SUCCEEDED', exit_code = 0, claimed_by = NULL")
    stopped = run_cli(["stop", "--yes"], cwd=folder, env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "no running jobs to stop" in stopped.stdout
    assert "removed 1 leftover container(s)" in stopped.stdout + stopped.stderr
    assert _jobs(home)[job_id] == ("SUCCEEDED", 0)
    assert store_containers(home) == []


def test_an_engine_named_by_docker_host_is_the_one_asked(
    make_project: MakeProject, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    folder = make_project()
    done = run_cli(["run", "--xgroup", "quick", "job.py"], cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(home / "caliban.db") as db:
        db.execute("UPDATE jobs SET state = 'RUNNING', claimed_by = NULL")
    away = {**env, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    status = run_cli(["status"], cwd=folder, env=away)
    assert status.returncode == 0, status.stderr
    assert "could not refresh local jobs: cannot reach a Docker engine" in status.stderr
    assert "no.sock" in status.stderr and "Traceback" not in status.stderr
    (job_id,) = _jobs(home)
    logs = run_cli(["logs", job_id], cwd=folder, env=away)
    assert logs.returncode == 1 and "no.sock" in logs.stderr, logs.stderr


@pytest.mark.parametrize("tty", [False, True], ids=["frames", "terminal"])
async def test_the_stdlib_client_reads_what_aiodocker_reads(tty: bool, base_image: str) -> None:
    script = (
        "printf 'a\\303'; sleep 0.2; printf '\\251 b\\n' >&2; "
        "head -c 70000 /dev/zero | tr '\\0' x; echo; printf end"
    )
    flags = ["-t"] if tty else []
    cid = docker_cli(
        "run", "-d", "--label", f"{TEST_LABEL}={RUN_ID}", *flags, base_image, "sh", "-c", script
    ).strip()  # fmt: skip
    try:
        docker_cli("wait", cid)
        path = local_socket(None)
        assert path is not None
        quick = QuickEngine(path)
        handle = QuickContainer(path, cid)
        async with aiodocker.Docker() as docker:
            theirs = "".join(await DockerEngine(docker).output(docker.containers.container(cid)))
        ours = "".join(await quick.output(handle))
        assert ours == theirs
        assert "x" * 70000 in ours and ours.endswith("end")
        assert " b" in ours and "a" in ours  # what both streams wrote
        listed = await quick.listed(f'{{"label": ["{TEST_LABEL}={RUN_ID}"]}}')
        assert cid in {h.id for h, _ in listed}
    finally:
        docker_cli("rm", "-f", cid, check=False)


async def test_engine_errors_carry_the_status_and_the_engines_words() -> None:
    path = local_socket(None)
    assert path is not None
    gone = QuickContainer(path, f"caliban-no-such-{RUN_ID}")
    with pytest.raises(EngineError) as caught:
        await gone.show()
    assert caught.value.status == 404 and "No such container" in caught.value.message
    async with aiodocker.Docker() as docker:
        with pytest.raises(aiodocker.DockerError) as theirs:
            await docker.containers.container(gone.id).show()
    assert theirs.value.message == caught.value.message


async def test_stop_and_delete_of_a_running_container(base_image: str) -> None:
    cid = docker_cli(
        "run", "-d", "--label", f"{TEST_LABEL}={RUN_ID}", "--init", base_image, "sleep", "300"
    ).strip()  # fmt: skip
    try:
        path = local_socket(None)
        assert path is not None
        handle = QuickContainer(path, cid)
        with anyio.fail_after(30):
            await handle.stop(t=0)
            assert (await handle.show())["State"]["Running"] is False
            await handle.stop(t=0)  # already stopped (304): no error
            await handle.delete(force=True, v=True)
        with pytest.raises(EngineError) as caught:
            await handle.show()
        assert caught.value.status == 404
    finally:
        docker_cli("rm", "-f", cid, check=False)


# Bytes that are not text, on both streams, and an exit code of the job's own.
SWEEP_PY = """\
import sys
code = int(sys.argv[sys.argv.index("--code") + 1])
sys.stdout.buffer.write(b"out %d \\xff\\x00\\n" % code)
sys.stdout.flush()
sys.stderr.write("err %d\\n" % code)
sys.exit(code)
"""


@pytest.mark.parametrize("prewarm", ["1", "0"], ids=["pre-warmed", "plain"])
@pytest.mark.usefixtures("remove_leftovers")
def test_a_sweep_of_a_built_image_runs_without_aiodocker(
    prewarm: str, make_project: MakeProject, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    # The image is there already (a no-change build opens no aiodocker connection),
    # so the whole run (create, attach, start, wait, remove) goes through the stdlib.
    folder = make_project({"sweep.py": SWEEP_PY, "sweep.json": '{"code": [0, 3, 0, 5]}'})
    built = run_cli(["build", "sweep.py"], cwd=folder, env=env)
    assert built.returncode == 0, built.stderr
    args = ["run", "--xgroup", "quick", "--max_parallel", "2"]
    args += ["--experiment_config", "sweep.json", "sweep.py"]
    seen = loaded_by(args, tmp_path, {**env, "CALIBAN_PREWARM": prewarm}, cwd=folder)
    assert seen["code"] == 1, seen  # two jobs failed
    _no_engine_client(seen)
    with sqlite3.connect(home / "caliban.db") as db:
        rows = db.execute(
            "SELECT e.args, j.state, j.exit_code, j.log_path FROM jobs j "
            "JOIN experiments e ON e.id = j.experiment_id"
        ).fetchall()
    assert sorted((json.loads(a)[1], str(s), c) for a, s, c, _ in rows) == [
        ("0", "SUCCEEDED", 0),
        ("0", "SUCCEEDED", 0),
        ("3", "FAILED", 3),
        ("5", "FAILED", 5),
    ]
    for args_json, _, code, log in rows:
        # Every byte the job wrote, as the engine sent it: nothing decoded or replaced.
        data = Path(log).read_bytes()
        assert sorted(data.splitlines(keepends=True)) == sorted(
            [b"out %d \xff\x00\n" % code, b"err %d\n" % code]
        ), args_json
    assert store_containers(home) == []
