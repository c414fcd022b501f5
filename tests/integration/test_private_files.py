"""The store and the logs are the user's alone (0600 files, 0700 folders), and secret
``-e`` values never reach the store, the logs or ``status --json``."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from caliban import events as ev
from caliban.adapters import filemodes
from caliban.adapters.store import Store
from caliban.options import ProjectOptions, RunRequest
from caliban.session import Session
from tests.conftest import MakeProject
from tests.integration.cloud_helpers import caliban


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_store_and_its_side_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "caliban-home"
    db = home / "caliban.db"
    async with Store(db) as store:
        await store.xgroup("g", "me")
        # The write-ahead log and shared-memory files exist while the store is open.
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.exists() and shm.exists()
        assert (_mode(db), _mode(wal), _mode(shm)) == (0o600, 0o600, 0o600)
    assert _mode(home) == 0o700


async def test_files_left_readable_by_an_older_version_are_tightened_on_open(
    tmp_path: Path,
) -> None:
    home = tmp_path / "old-home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    db = home / "caliban.db"
    log = home / "logs" / "group" / "job.log"
    log.parent.mkdir(parents=True)
    log.write_text("output\n")
    # An older caliban still has the store open: its WAL and SHM files exist.
    older = sqlite3.connect(db, isolation_level=None)
    try:
        older.execute("PRAGMA journal_mode=WAL")
        older.execute("CREATE TABLE t (x)")
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        for path, mode in (
            (db, 0o644),
            (wal, 0o644),
            (shm, 0o644),
            (log, 0o644),
            (log.parent, 0o755),
            (home / "logs", 0o755),
        ):
            os.chmod(path, mode)
        async with Store(db):
            pass
        assert _mode(wal) == 0o600 and _mode(shm) == 0o600
    finally:
        older.close()
    assert _mode(home) == 0o700
    assert _mode(db) == 0o600
    assert _mode(home / "logs") == 0o700 and _mode(log.parent) == 0o700
    assert _mode(log) == 0o600


async def test_log_files_are_private_and_other_folders_are_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    outside = shared / "job.log"
    async with await filemodes.open_log(outside) as f:
        await f.write("x\n")
    assert _mode(outside) == 0o600 and _mode(shared) == 0o755

    log = tmp_path / "home" / "logs" / "g" / "j.log"
    await filemodes.write_log(log, "all of it\n")
    assert log.read_text() == "all of it\n"
    assert (_mode(log), _mode(log.parent), _mode(log.parent.parent)) == (0o600, 0o700, 0o700)


ENV_JOB = """
import os
ok = os.environ.get("DB_PASSWORD") == "hunter2" and os.environ.get("MODE") == "plain"
print("secret-ok" if ok else "secret-missing", flush=True)
"""


@pytest.mark.docker
async def test_a_secret_env_value_is_used_but_never_recorded(
    env: dict[str, str], home: Path, make_project: MakeProject
) -> None:
    folder = make_project({"envjob.py": ENV_JOB})
    run_env = {k: v for k, v in env.items() if k != "DB_PASSWORD"}
    args = ["--docker_run_args", "-e DB_PASSWORD=hunter2 -e MODE=plain"]
    done = await caliban(
        ["run", "--nogpu", "--xgroup", "sec", *args, "envjob.py"], cwd=folder, env=run_env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "secret-ok" in done.stdout

    status = await caliban(["status", "--xgroup", "sec", "--json"], cwd=folder, env=run_env)
    assert status.returncode == 0, status.stderr
    job = json.loads(status.stdout)[0]
    assert job["details"]["secret_env"] == ["DB_PASSWORD"]

    # Resubmit: the value comes from caliban's environment, or the command stops.
    missing = await caliban(
        ["resubmit", "--xgroup", "sec", "--all_jobs", "--yes"], cwd=folder, env=run_env
    )
    assert missing.returncode == 2, missing.stdout + missing.stderr
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "export DB_PASSWORD" in lines[0], missing.stderr
    again = await caliban(
        ["resubmit", "--xgroup", "sec", "--all_jobs", "--yes"],
        cwd=folder,
        env={**run_env, "DB_PASSWORD": "hunter2"},
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "secret-ok" in again.stdout

    stored = [home / "caliban.db", *home.glob("caliban.db-*"), *home.rglob("*.log")]
    for path in stored:
        assert b"hunter2" not in path.read_bytes(), path
    assert b"MODE=plain" in (home / "caliban.db").read_bytes() + b"".join(
        p.read_bytes() for p in home.glob("caliban.db-*")
    )
    assert "hunter2" not in done.stdout + done.stderr + status.stdout
    logs = list((home / "logs").rglob("*.log"))
    assert len(logs) == 2
    assert all(_mode(p) == 0o600 and _mode(p.parent) == 0o700 for p in logs)
    assert _mode(home / "logs") == 0o700 and _mode(home / "caliban.db") == 0o600


async def test_a_dry_run_shows_secret_names_without_their_values(
    tmp_path: Path, make_project: MakeProject
) -> None:
    folder = make_project()
    seen: list[ev.Event] = []
    async with Session(home=tmp_path / "h", environ={}, sink=seen.append) as session:
        await session.run(
            RunRequest(
                project=ProjectOptions(folder=folder, entry="job.py", use_gpu=False),
                docker_run_args=("-e", "API_TOKEN=tok-123", "-e", "MODE=plain"),
                dry_run=True,
            )
        )
    text = "\n".join(e.text for e in seen if isinstance(e, ev.Notice))
    assert "-e API_TOKEN " in text and "-e MODE=plain" in text
    assert "tok-123" not in text
    assert not (tmp_path / "h" / "caliban.db").exists()
