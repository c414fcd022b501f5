"""The SQLite store: migrations, planning and resumption, sticky states, concurrency."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from caliban.adapters.store import SCHEMA_VERSION, PlanItem, Store
from caliban.errors import StoreError
from caliban.spec import JobState, Platform


def _items(n: int, prefix: str = "j") -> list[PlanItem]:
    return [
        PlanItem(
            index=i,
            args=("--i", str(i)),
            kwargs={"i": i},
            job_id=f"{prefix}{i}",
            image="img:1",
            spec={"Cmd": ["--i", str(i)]},
            details={"mode": "cpu"},
        )
        for i in range(n)
    ]


async def _plan(store: Store, items: list[PlanItem], xgroup: str = "g") -> list[tuple[str, str]]:
    xid = await store.xgroup(xgroup, "alice")
    sid = await store.container_spec("local:abc", "img:1", {"image": "img:1"}, "alice")
    planned = await store.plan(
        xgroup_id=xid,
        container_spec_id=sid,
        platform=Platform.LOCAL,
        user="alice",
        items=items,
        batch=3,
    )
    return [(p.action, p.job.job_id) for p in planned]


async def test_fresh_store_is_migrated_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "h" / "caliban.db"
    async with Store(path) as store:
        first_id = store.store_id
    async with Store(path) as store:
        assert store.store_id == first_id
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "caliban.db"
    async with Store(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer caliban"):
        async with Store(path):
            pass


async def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open"):
        async with Store(blocker / "caliban.db"):
            pass


async def test_planning_resumes_a_group(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        first = await _plan(store, _items(5))
        assert first == [("new", f"j{i}") for i in range(5)]
        await store.transition("j0", JobState.SUCCEEDED, exit_code=0)
        await store.transition("j1", JobState.FAILED, exit_code=1)
        await store.transition("j2", JobState.RUNNING)
        await store.transition("j3", JobState.STOPPED)
        # j4 stays PLANNED: maybe launched, maybe not.
        again = await _plan(store, _items(5, prefix="k"))
        assert again == [
            ("done", "j0"),
            ("new", "k1"),
            ("active", "j2"),
            ("new", "k3"),
            ("reconcile", "j4"),
        ]
        assert len(await store.jobs(xgroup="g")) == 7


async def test_identical_experiments_are_kept_apart(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        same = [
            PlanItem(
                index=i,
                args=("--x",),
                kwargs={"x": True},
                job_id=f"s{i}",
                image="i",
                spec={},
                details={},
            )
            for i in range(3)
        ]
        assert [a for a, _ in await _plan(store, same)] == ["new"] * 3
        for i in range(3):
            await store.transition(f"s{i}", JobState.SUCCEEDED)
        assert [a for a, _ in await _plan(store, same)] == ["done"] * 3


async def test_terminal_states_are_sticky(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        await _plan(store, _items(1))
        assert await store.transition("j0", JobState.STOPPED, message="stopped by user")
        assert not await store.transition("j0", JobState.FAILED, exit_code=137)
        (job,) = await store.jobs(job_ids=["j0"])
        assert job.state is JobState.STOPPED and job.exit_code is None
        assert await store.transition("j0", JobState.FAILED, exit_code=137, force=True)
        states = [s for _, s, _ in await store.events("j0")]
        assert states == ["PLANNED", "STOPPED", "FAILED"]


async def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Many tasks on one connection, and a second process-like connection."""
    path = tmp_path / "c.db"
    async with Store(path) as a, Store(path) as b:
        await _plan(a, _items(60))

        async def bump(store: Store, i: int) -> None:
            await store.transition(f"j{i}", JobState.RUNNING, platform_id=f"c{i}")
            await store.transition(f"j{i}", JobState.SUCCEEDED, exit_code=0)

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(bump, a if i % 2 else b, i)
        jobs = await a.jobs(xgroup="g")
        assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 60
        assert all(j.platform_id == f"c{j.index}" for j in jobs)
        counts = [len(await a.events(j.job_id)) for j in jobs]
        assert sum(counts) == 180


async def test_job_lookup_by_short_id_and_limits(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        await _plan(store, _items(12))
        job = await store.job("j11")
        assert job is not None and job.index == 11
        assert await store.job("nope") is None
        assert await store.job("1") is None  # ambiguous: j1 and j11
        latest = await store.jobs(limit=3)
        assert [j.job_id for j in latest] == ["j9", "j10", "j11"]
        assert len(await store.jobs(job_ids=[f"j{i}" for i in range(12)] * 60)) == 12


async def test_cancelled_writes_leave_no_transaction_open(tmp_path: Path) -> None:
    """Cancellation at any point of a write must not break the next write."""
    async with Store(tmp_path / "c.db") as store:
        await _plan(store, _items(40))
        for delay in (0, 0.0001, 0.0005, 0.001, 0.002, 0.005):
            with anyio.move_on_after(delay):
                async with anyio.create_task_group() as tg:
                    for i in range(40):
                        tg.start_soon(store.transition, f"j{i}", JobState.RUNNING)
            # The store still takes writes, and what was written is whole.
            assert await store.transition("j0", JobState.UNKNOWN, force=True)
            assert await store.transition("j0", JobState.RUNNING, force=True)
        jobs = await store.jobs(xgroup="g")
        assert {j.state for j in jobs} <= {JobState.PLANNED, JobState.RUNNING}


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Both read the schema version before either migrates: only one may migrate."""
    path = tmp_path / "race.db"
    code = (
        "import anyio, sys\n"
        "from caliban.adapters.store import Store\n"
        "async def main():\n"
        "    async with Store(sys.argv[1]) as s:\n"
        "        print(s.store_id)\n"
        "anyio.run(main)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1


async def test_opening_waits_for_a_writer_holding_a_store_still_in_rollback_mode(
    tmp_path: Path,
) -> None:
    """SQLite refuses the switch to WAL at once, without the busy handler, here."""
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")

    async def release() -> None:
        await anyio.sleep(0.5)
        holder.execute("COMMIT")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            async with Store(path) as store:
                assert store.store_id
        async with Store(path) as store, store.db.execute("PRAGMA journal_mode") as cur:
            assert await cur.fetchone() == ("wal",)
    finally:
        holder.close()


async def test_a_store_of_schema_2_gains_the_metrics_table(tmp_path: Path) -> None:
    from caliban.adapters.store import MIGRATIONS

    path = tmp_path / "caliban.db"
    # A history written before `caliban results` existed, with a job in it.
    with sqlite3.connect(path) as db:
        for statements in MIGRATIONS[:2]:
            for statement in statements:
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
    async with Store(path) as store:
        await _plan(store, _items(2))
        assert await store.metrics(["j0", "j1"]) == {}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    async with Store(path) as store:
        await store.keep_metrics({"j0": {"accuracy": 0.9}, "j1": None})
    async with Store(path) as store:
        assert await store.metrics(["j0", "j1", "nope"]) == {"j0": {"accuracy": 0.9}, "j1": None}


async def test_lookups_of_more_ids_than_one_statement_takes(tmp_path: Path) -> None:
    """Every lookup by a list of ids asks in chunks; 1,201 ids need three."""
    n = 1201
    async with Store(tmp_path / "c.db") as store:
        xid = await store.xgroup("g", "alice")
        sid = await store.container_spec("local:abc", "img:1", {"image": "img:1"}, "alice")
        planned = await store.plan(
            xgroup_id=xid, container_spec_id=sid, platform=Platform.LOCAL, user="alice",
            items=_items(n),
        )  # fmt: skip
        ids = [p.job.job_id for p in planned]
        changed = await store.transitions(
            [(i, JobState.SUCCEEDED, 0, None, f"p{i}", None) for i in ids]
        )
        assert changed == n
        fresh = await store.current([p.job for p in planned])
        assert [j.job_id for j in fresh] == ids
        assert {j.state for j in fresh} == {JobState.SUCCEEDED}
        assert [j.platform_id for j in fresh] == [f"p{i}" for i in ids]
        await store.keep_metrics({i: {"loss": k} for k, i in enumerate(ids)})
        kept = await store.metrics(ids)
        assert len(kept) == n and kept[ids[-1]] == {"loss": n - 1}
        run_id = await store.open_run(lease=60)
        claim = await store.claim(run_id, ids)
        assert claim.claimed == frozenset(ids) and not claim.held
        owners = await store.owners(ids)
        assert set(owners) == set(ids) and {o.run_id for o in owners.values()} == {run_id}
