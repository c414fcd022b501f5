"""Runs claim the jobs they launch: one owner per job, dead owners recognised,
and a re-run's summary that counts every job once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from caliban.adapters.store import MIGRATIONS, SCHEMA_VERSION, RunOwner, Store
from caliban.platforms.local.run import execute
from caliban.spec import JobRecord, JobState, Platform, Update
from caliban.sweep.engine import RunResult, StoreLaunch, skip_notices
from tests.unit.test_store import _items, _plan


def _gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def _edit_run(path: Path, run_id: str, **values: object) -> None:
    with sqlite3.connect(path) as db:
        for column, value in values.items():
            db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, run_id))


async def test_two_stores_claiming_the_same_jobs_split_them(tmp_path: Path) -> None:
    """Two processes (two connections) racing for every job: each job gets one owner."""
    path = tmp_path / "c.db"
    async with Store(path) as a, Store(path) as b:
        await _plan(a, _items(60))
        ids = [f"j{i}" for i in range(60)]
        run_a = await a.open_run(lease=60)
        run_b = await b.open_run(lease=60)
        got: dict[str, frozenset[str]] = {}

        async def grab(store: Store, run: str, order: list[str]) -> None:
            mine: set[str] = set()
            for start in range(0, 60, 7):
                mine |= (await store.claim(run, order[start : start + 7])).claimed
            got[run] = frozenset(mine)

        async with anyio.create_task_group() as tg:
            tg.start_soon(grab, a, run_a, ids)
            tg.start_soon(grab, b, run_b, list(reversed(ids)))
        assert got[run_a] | got[run_b] == set(ids)
        assert got[run_a] & got[run_b] == set()
        # A third run gets none of them, and learns who holds each.
        late = await a.claim(await a.open_run(lease=60), ids)
        assert late.claimed == frozenset()
        assert {j: o.run_id for j, o in late.held.items()} == {
            **{j: run_a for j in got[run_a]},
            **{j: run_b for j in got[run_b]},
        }
        assert all(o.pid == os.getpid() for o in late.held.values())
        assert {j: o.run_id for j, o in (await b.owners(ids)).items()} == {
            j: o.run_id for j, o in late.held.items()
        }


@pytest.mark.parametrize("how", ["closed", "pid gone", "lease expired elsewhere"])
async def test_a_dead_owner_releases_its_jobs(tmp_path: Path, how: str) -> None:
    path = tmp_path / "c.db"
    async with Store(path) as store:
        await _plan(store, _items(4))
        first = await store.open_run(lease=60)
        assert (await store.claim(first, ["j0", "j1", "j2"])).claimed == {"j0", "j1", "j2"}
        second = await store.open_run(lease=60)
        blocked = await store.claim(second, ["j0", "j3"])
        assert blocked.claimed == {"j3"} and set(blocked.held) == {"j0"}
        if how == "closed":
            await store.close_run(first)
        elif how == "pid gone":
            _edit_run(path, first, pid=_gone_pid())
        else:
            _edit_run(path, first, host="another-host", lease_until="2000-01-01T00:00:00+00:00")
        taken = await store.claim(second, ["j0", "j1"])
        assert taken.claimed == {"j0", "j1"} and taken.held == {}
        assert await store.holds(second, "j0") and not await store.holds(first, "j0")
        assert set(await store.owners(["j0", "j1", "j2", "j3"])) == {"j0", "j1", "j3"}


async def test_a_live_owner_on_another_host_keeps_its_jobs_for_its_lease(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with Store(path) as store:
        await _plan(store, _items(1))
        first = await store.open_run(lease=60)
        await store.claim(first, ["j0"])
        # Its pid means nothing here: only the lease tells whether it lives.
        _edit_run(path, first, host="another-host", pid=_gone_pid())
        second = await store.open_run(lease=60)
        held = await store.claim(second, ["j0"])
        assert held.claimed == frozenset() and held.held["j0"].host == "another-host"
        await store.renew_run(first, lease=-1)
        assert (await store.claim(second, ["j0"])).claimed == {"j0"}


async def test_jobs_planned_for_a_run_are_its_own_from_the_start(tmp_path: Path) -> None:
    """plan(claim_for=run): the new jobs are held by that run before its claim, which
    then writes no job again and renews the run's lease; others see them held."""
    path = tmp_path / "c.db"
    async with Store(path) as store:
        run = await store.open_run(lease=60)
        _edit_run(path, run, lease_until="2000-01-01T00:00:00+00:00")  # a long planning
        xid = await store.xgroup("g", "alice")
        sid = await store.container_spec("local:abc", "img:1", {}, "alice")
        planned = await store.plan(
            xgroup_id=xid,
            container_spec_id=sid,
            platform=Platform.LOCAL,
            user="alice",
            items=_items(3),
            claim_for=run,
        )
        assert [p.action for p in planned] == ["new"] * 3
        ids = [p.job.job_id for p in planned]
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT DISTINCT claimed_by FROM jobs").fetchall() == [(run,)]
        before = store.db.total_changes
        assert (await store.claim(run, ids, lease=60)).claimed == set(ids)
        assert store.db.total_changes - before == 1  # the lease, no job
        other = await store.open_run(lease=60)
        refused = await store.claim(other, ids)
        assert refused.claimed == frozenset() and {o.run_id for o in refused.held.values()} == {run}


async def test_a_store_of_the_first_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
    async with Store(path) as store:
        await _plan(store, _items(2))
        run = await store.open_run(lease=60)
        assert (await store.claim(run, ["j0", "j1"])).claimed == {"j0", "j1"}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 2
        claimed = db.execute("SELECT claimed_by FROM jobs ORDER BY id").fetchall()
    assert claimed == [(run,), (run,)]


def _job(job_id: str, state: JobState) -> JobRecord:
    return JobRecord(
        job_id=job_id, platform=Platform.LOCAL, state=state, xgroup="g", experiment_id=1,
        index=0, args=(), kwargs={}, image="i", spec={}, details={}, platform_id=None,
        exit_code=None, message=None, log_path=None, user="u", created="", updated="",
    )  # fmt: skip


def test_a_rerun_counts_every_job_once() -> None:
    """The re-run that adopted 3 running jobs of 6 used to report 9 of 6."""
    jobs = [
        _job("a", JobState.SUCCEEDED),  # succeeded in an earlier run
        _job("b", JobState.RUNNING),  # another run's
        _job("c", JobState.PLANNED),  # another run's, queued there
        _job("d", JobState.SUCCEEDED),
        _job("e", JobState.FAILED),
        _job("f", JobState.STOPPED),
    ]
    result = RunResult("g", jobs, skipped=3, launched=frozenset({"d", "e", "f"}))
    tally = result.tally()
    assert sum(n for n, _ in tally) == len(jobs) == 6
    assert tally == [
        (1, "succeeded"),
        (1, "failed"),
        (1, "stopped"),
        (2, "already running"),
        (1, "already succeeded"),
    ]
    assert not result.ok
    # Nothing of ours failed: the jobs left to another run do not fail this one.
    calm = replace(result, jobs=[*jobs[:4]], launched=frozenset({"d"}))
    assert calm.ok and sum(n for n, _ in calm.tally()) == 4
    # Another run's job that failed meanwhile is counted once, as not ours.
    other_failed = RunResult("g", [_job("x", JobState.FAILED)], launched=frozenset())
    assert other_failed.tally() == [(1, "failed elsewhere")] and other_failed.ok
    # Without `launched` (remote platforms, resubmit) every job is the call's own.
    assert RunResult("g", jobs[:2]).tally() == [(1, "running"), (1, "succeeded")]


def test_skip_notices_name_the_other_run_in_one_line() -> None:
    owner = RunOwner("r1", 4242, "box", "2026-12-01T10:02:00+00:00")
    held = {f"j{i}": owner for i in range(12)}
    since = f"{datetime.fromisoformat(owner.started).astimezone():%H:%M}"
    (line,) = skip_notices("X", planned=20, mine=8, held=held, done=0, orphans=0, here="box")
    assert line == f"12 of 20 jobs of xgroup X are being run by pid 4242 since {since}; " + (
        "running the 8 others"
    )
    lines = skip_notices("X", planned=6, mine=0, held=held, done=2, orphans=1, here="other")
    assert lines[0].endswith("nothing is left to run here") and "pid 4242 on box" in lines[0]
    assert lines[1].startswith("2 job(s) of X already succeeded")
    assert lines[2].startswith("1 job(s) of X are still running from an earlier run")
    assert skip_notices("X", planned=3, mine=3, held={}, done=0, orphans=0) == []


class _Engine:
    """Stands in for the local backend at the seam `execute` uses: records what it runs."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def run(self, job: JobRecord, **_: object) -> Update:
        self.ran.append(job.job_id)
        return Update(job.job_id, JobState.SUCCEEDED, 0)

    async def remove(self, container: object) -> None:
        raise AssertionError("nothing to remove")


async def test_jobs_taken_over_while_queued_are_neither_run_nor_stopped(tmp_path: Path) -> None:
    """A run whose lease lapsed (a suspended laptop) lost its queued jobs to
    another run: it must not launch them, nor record them STOPPED at its end."""
    path = tmp_path / "c.db"
    async with Store(path) as store:
        xid = await store.xgroup("g", "alice")
        sid = await store.container_spec("local:abc", "img:1", {"image": "img:1"}, "alice")
        planned = await store.plan(xgroup_id=xid, container_spec_id=sid, platform=Platform.LOCAL,
                                   user="alice", items=_items(3))  # fmt: skip
        first = await store.open_run(lease=60)
        mine = (await store.claim(first, ["j0", "j1", "j2"])).claimed
        _edit_run(path, first, host="another-host", lease_until="2000-01-01T00:00:00+00:00")
        second = await store.open_run(lease=60)
        assert (await store.claim(second, ["j1", "j2"])).claimed == {"j1", "j2"}
        await store.renew_run(first, lease=60)
        engine = _Engine()
        run = StoreLaunch(store, lambda e: None, 3, first)
        await execute([p for p in planned if p.job.job_id in mine], backend=engine, run=run,  # type: ignore[arg-type]
                      max_parallel=1, inventory=None, gpus_per_job=0)  # fmt: skip
        jobs = await store.jobs(job_ids=[p.job.job_id for p in planned])
        assert engine.ran == ["j0"]
        assert [j.state for j in jobs] == [JobState.SUCCEEDED, JobState.PLANNED, JobState.PLANNED]
        assert await store.holds(second, "j1") and await store.holds(second, "j2")
