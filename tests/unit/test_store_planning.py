"""Planning that is interrupted leaves no PLANNED job behind; an unwritable store
is found before anything is built."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from caliban.adapters.store import PlanItem, Store
from caliban.errors import StoreError, StoreUnwritable
from caliban.spec import JobState, Platform


def _item(i: int) -> PlanItem:
    return PlanItem(
        index=i,
        args=("--i", str(i)),
        kwargs={"i": i},
        job_id=f"job{i:06d}",
        image="img:1",
        spec={"Cmd": ["--i", str(i)]},
        details={},
    )


def _states(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


async def _interrupt_planning(path: Path, *, after: int, fail: BaseException | None) -> None:
    async with Store(path) as store:
        xid = await store.xgroup("g", "alice")
        sid = await store.container_spec("local:abc", "img:1", {}, "alice")
        with anyio.CancelScope() as scope:

            def items() -> Iterator[PlanItem]:
                for i in range(10_000):
                    if i == after:
                        if fail is not None:
                            raise fail
                        # As the CLI's signal handler does: cancel the work scope.
                        scope.cancel()
                    yield _item(i)

            await store.plan(
                xgroup_id=xid,
                container_spec_id=sid,
                platform=Platform.LOCAL,
                user="alice",
                items=items(),
                batch=100,
            )
        assert scope.cancelled_caught or fail is not None


async def test_a_cancelled_plan_records_its_jobs_stopped(tmp_path: Path) -> None:
    path = tmp_path / "caliban.db"
    await _interrupt_planning(path, after=250, fail=None)
    states = _states(path)
    # Two batches were written before the signal; none of them stays PLANNED.
    assert states.get(JobState.STOPPED.value, 0) >= 200
    assert JobState.PLANNED.value not in states
    with sqlite3.connect(path) as db:
        (message,) = db.execute("SELECT DISTINCT message FROM jobs").fetchone()
    assert message == "interrupted while planning"


async def test_a_failing_plan_records_its_jobs_stopped(tmp_path: Path) -> None:
    path = tmp_path / "caliban.db"
    with pytest.raises(RuntimeError):
        await _interrupt_planning(path, after=150, fail=RuntimeError("boom"))
    assert _states(path) == {JobState.STOPPED.value: 100}


async def test_an_interrupted_plan_is_resumed_by_planning_again(tmp_path: Path) -> None:
    path = tmp_path / "caliban.db"
    await _interrupt_planning(path, after=150, fail=None)
    async with Store(path) as store:
        xid = await store.xgroup("g", "alice")
        sid = await store.container_spec("local:abc", "img:1", {}, "alice")
        planned = await store.plan(
            xgroup_id=xid,
            container_spec_id=sid,
            platform=Platform.LOCAL,
            user="alice",
            items=[PlanItem(**{**_item(i).__dict__, "job_id": f"new{i}"}) for i in range(300)],
            batch=100,
        )
    # Stopped jobs get a new job each, like failed ones: all 300 are to run.
    assert [p.action for p in planned] == ["new"] * 300


def _make_read_only(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    # Permission bits do not stop root; the immutable attribute does.
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a file read-only as root here: {done.stderr!r}")


def _undo_read_only(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
    path.chmod(0o644)


async def test_check_writable_finds_a_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "caliban.db"
    async with Store(path) as store:
        await store.check_writable()  # a healthy store passes, and nothing changes
        before = store.store_id
    _make_read_only(path)
    try:
        async with Store(path) as store:
            assert store.store_id == before  # reading still works
            with pytest.raises(StoreUnwritable) as caught:
                await store.check_writable()
            # and the store is still usable for reads afterwards
            assert await store.jobs() == []
    finally:
        _undo_read_only(path)
    assert str(path) in caught.value.message and caught.value.exit_code == 2


async def test_a_write_refused_mid_transaction_is_a_store_error(tmp_path: Path) -> None:
    # The file turning read-only under a running sweep: the statement itself
    # fails, after BEGIN succeeded. The caller gets the store's one-line error.
    async with Store(tmp_path / "caliban.db") as store:
        await store.db.execute("PRAGMA query_only = ON")
        with pytest.raises(StoreError, match=r"cannot write to .*readonly"):
            await store.xgroup("g", "alice")
