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
from caliban.spec import JobRecord, JobState, Platform, Update


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


async def test_planned_records_are_what_the_store_reads_back(tmp_path: Path) -> None:
    """The records planning hands out are built from what it wrote, not read back:
    they must be the very records a read gives, field by field, and carry the text
    the store holds for their spec."""
    async with Store(tmp_path / "caliban.db") as store:
        xid = await store.xgroup("g", "alice")
        sid = await store.container_spec("gke:abc", "img:1", {}, "alice")
        pid = await store.provenance({"git": {"commit": "abc"}, "argv": ["caliban"]})

        def items(order: list[int], prefix: str) -> list[PlanItem]:
            return [
                PlanItem(
                    index=n,
                    args=("--i", str(i)),
                    kwargs={"i": i, "name": f"x{i}", "rate": 0.5},
                    job_id=f"{prefix}{i:06d}",
                    image="img:1",
                    spec={"metadata": {"name": f"j{i}"}, "spec": {"args": ["--i", str(i)]}},
                    details={"cluster": {"namespace": "ns"}, "k8s_job": f"j{i}"},
                    log_path=f"/logs/{i}" if i % 2 else None,
                    provenance_id=pid if i % 3 else None,
                )
                for n, i in enumerate(order)
            ]

        async def plan(batch: list[PlanItem]) -> list[tuple[str, JobRecord]]:
            planned = await store.plan(
                xgroup_id=xid,
                container_spec_id=sid,
                platform=Platform.GKE,
                user="alice",
                items=batch,
                batch=4,
            )
            read = {r.job_id: r for r in await store.jobs(job_ids=[p.job.job_id for p in planned])}
            for p in planned:
                assert p.job == read[p.job.job_id]
                assert p.job.spec_json() == read[p.job.job_id].spec_json()
                assert p.job.provenance == read[p.job.job_id].provenance
            return [(p.action, p.job) for p in planned]

        first = await plan(items(list(range(10)), "a"))
        assert [a for a, _ in first] == ["new"] * 10
        await store.transition("a000002", JobState.FAILED, message="boom")
        await store.transition("a000005", JobState.SUBMITTED, platform_id="j5")
        # Re-planned in another order: a failed experiment gets a new job that keeps the
        # experiment as first recorded (its index), the others are handed back as they are.
        again = await plan(items([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "b"))
        actions = {job.job_id: action for action, job in again}
        assert actions["b000002"] == "new" and actions["a000005"] == "active"
        assert sum(a == "reconcile" for a in actions.values()) == 8
        (renewed,) = [job for action, job in again if action == "new"]
        assert renewed.index == 2 and renewed.experiment_id == first[2][1].experiment_id


async def test_current_records_are_what_a_full_read_gives(tmp_path: Path) -> None:
    """A sweep's end reads only the columns that change after planning: the records
    it gets must be those a full read gives, in the same order, spec text included."""
    async with Store(tmp_path / "caliban.db") as store:
        xid = await store.xgroup("g", "alice")
        sid = await store.container_spec("gke:abc", "img:1", {}, "alice")
        pid = await store.provenance({"git": {"commit": "abc"}})

        async def plan(prefix: str, n: int) -> list[JobRecord]:
            planned = await store.plan(
                xgroup_id=xid,
                container_spec_id=sid,
                platform=Platform.GKE,
                user="alice",
                items=[
                    PlanItem(
                        index=i,
                        args=("--i", str(i)),
                        kwargs={"i": i, "rate": 0.5},
                        job_id=f"{prefix}{i:06d}",
                        image="img:1",
                        spec={"metadata": {"name": f"j{i}"}, "spec": {"args": [str(i)]}},
                        details={"cluster": {"namespace": "ns"}, "k8s_job": f"j{i}"},
                        provenance_id=pid if i % 2 else None,
                    )
                    for i in range(n)
                ],
            )
            return [p.job for p in planned]

        first = await plan("a", 1203)  # more ids than one query binds
        await store.record(
            [
                Update("a000001", JobState.SUBMITTED, platform_id="j1", details={"uid": "u1"}),
                Update("a000002", JobState.FAILED, exit_code=3, message="refused"),
            ]
        )
        # Planned again: a new job for the failed experiment, the others handed back.
        again = await plan("b", 4)
        assert {r.job_id for r in again} == {"a000000", "a000001", "b000002", "a000003"}
        await store.transition("b000002", JobState.SUBMITTED, platform_id="j2")
        ghost = first[0].with_changes(job_id="never-recorded")
        for records in (first, again, [*again, ghost]):
            full = await store.jobs(job_ids=[r.job_id for r in records])
            current = await store.current(records)
            assert [r.job_id for r in current] == [r.job_id for r in full]
            assert current == full
            assert [r.spec_json() for r in current] == [r.spec_json() for r in full]
        submitted = {r.job_id: r for r in await store.current(again)}["a000001"]
        assert submitted.state is JobState.SUBMITTED and submitted.platform_id == "j1"
        assert submitted.details == {
            "cluster": {"namespace": "ns"},
            "k8s_job": "j1",
            "uid": "u1",
        }
        assert submitted.spec == {"metadata": {"name": "j1"}, "spec": {"args": ["1"]}}


def test_a_records_changes_never_touch_its_spec() -> None:
    record = JobRecord.with_spec_json(
        '{"a":1}',
        job_id="j",
        platform=Platform.GKE,
        state=JobState.PLANNED,
        xgroup="g",
        experiment_id=1,
        index=0,
        args=(),
        kwargs={},
        image="img",
        details={},
        platform_id=None,
        exit_code=None,
        message=None,
        log_path=None,
        user="u",
        created="t0",
        updated="t0",
    )
    changed = record.with_changes(state=JobState.SUBMITTED, updated="t1")
    assert (changed.state, changed.updated, record.state) == (
        JobState.SUBMITTED,
        "t1",
        JobState.PLANNED,
    )
    assert changed.spec == {"a": 1} and changed.spec_json() == '{"a":1}'
    bads: list[dict[str, object]] = [{"spec": {}}, {"colour": "red"}]
    for bad in bads:
        with pytest.raises(TypeError):
            record.with_changes(**bad)
