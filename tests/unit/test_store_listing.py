"""Listing jobs: the latest N of each experiment chosen in the query, specs decoded lazily."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from pathlib import Path

from caliban.adapters.store import PlanItem, Store
from caliban.spec import JobRecord, JobState, Platform


def _items(n: int, attempt: int, prefix: str) -> list[PlanItem]:
    return [
        PlanItem(
            index=i,
            args=("--i", str(i)),
            kwargs={"i": i},
            job_id=f"{prefix}{i}-{attempt}",
            image="img:1",
            spec={"Cmd": ["--i", str(i)], "attempt": attempt},
            details={},
        )
        for i in range(n)
    ]


async def _history(store: Store, xgroup: str, experiments: int, attempts: int) -> None:
    """``attempts`` jobs of each experiment: every one but the last fails."""
    xid = await store.xgroup(xgroup, "alice")
    sid = await store.container_spec(f"local:{xgroup}", "img:1", {"image": "img:1"}, "alice")
    for attempt in range(attempts):
        planned = await store.plan(
            xgroup_id=xid,
            container_spec_id=sid,
            platform=Platform.LOCAL,
            user="alice",
            items=_items(experiments, attempt, xgroup),
        )
        if attempt < attempts - 1:
            await store.transitions(
                [(p.job.job_id, JobState.FAILED, 1, None, None, None) for p in planned]
            )


def _latest(jobs: list[JobRecord], n: int) -> list[str]:
    """What status showed before the query did it: the newest n of each experiment."""
    seen: Counter[int] = Counter()
    kept = []
    for job in reversed(jobs):
        seen[job.experiment_id] += 1
        if seen[job.experiment_id] <= n:
            kept.append(job.job_id)
    return kept[::-1]


async def test_per_experiment_keeps_the_newest_jobs_of_each_experiment(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        await _history(store, "g", experiments=4, attempts=3)
        await _history(store, "other", experiments=2, attempts=2)
        everything = await store.jobs(xgroup="g")
        assert len(everything) == 12
        for n in (1, 2, 3, 5):
            got = await store.jobs(xgroup="g", per_experiment=n)
            assert [j.job_id for j in got] == _latest(everything, n)
            assert {j.xgroup for j in got} == {"g"}
        newest = await store.jobs(xgroup="g", per_experiment=1)
        assert [j.job_id for j in newest] == [f"g{i}-2" for i in range(4)]
        assert {j.state for j in newest} == {JobState.PLANNED}
        # 0 and None: no per-experiment cut.
        assert len(await store.jobs(xgroup="g", per_experiment=0)) == 12
        # Without a group, across every group; with ids and a platform, still per experiment.
        all_groups = await store.jobs()
        assert [j.job_id for j in await store.jobs(per_experiment=1)] == _latest(all_groups, 1)
        ids = [j.job_id for j in everything]
        chosen = await store.jobs(job_ids=ids, platform=Platform.LOCAL, per_experiment=2)
        assert [j.job_id for j in chosen] == _latest(everything, 2)


async def test_the_limit_and_the_cut_combine_in_the_query(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        await _history(store, "g", experiments=5, attempts=2)
        got = await store.jobs(xgroup="g", per_experiment=1, limit=3)
        assert [j.job_id for j in got] == ["g2-1", "g3-1", "g4-1"]


async def test_specs_are_decoded_when_read_and_records_behave_as_before(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        await _history(store, "g", experiments=2, attempts=1)
        first, second = await store.jobs(xgroup="g")
    assert not isinstance(vars(first)["spec"], dict)  # still the stored text
    assert first.spec == {"Cmd": ["--i", "0"], "attempt": 0}
    assert isinstance(vars(first)["spec"], dict) and first.spec is first.spec
    copy = dataclasses.replace(second, state=JobState.FAILED)
    assert copy.spec == second.spec and copy.state is JobState.FAILED
    again = pickle.loads(pickle.dumps(second))
    assert again == second and again.spec == {"Cmd": ["--i", "1"], "attempt": 0}
    built = dataclasses.replace(second, spec={"other": True})
    assert built.spec == {"other": True} and built != second
    assert JobRecord.__dataclass_fields__["spec"].default is dataclasses.MISSING


async def test_a_batch_of_transitions_changes_what_one_by_one_would(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        await _history(store, "g", experiments=5, attempts=1)
        a, b, c, d, e = (f"g{i}-0" for i in range(5))
        await store.transitions(
            [
                (a, JobState.SUBMITTED, None, None, None, {"k": 1}),
                (b, JobState.SUBMITTED, None, None, None, None),
                (c, JobState.SUBMITTED, None, None, None, None),
                (d, JobState.SUCCEEDED, 0, None, None, None),
            ]
        )
        changed = await store.transitions(
            [
                (a, JobState.RUNNING, None, "started", "pod-a", {"node": "n1"}),
                (a, JobState.RUNNING, None, None, None, None),  # same state, nothing new
                (a, JobState.SUCCEEDED, 0, None, None, None),
                (b, JobState.SUBMITTED, None, None, None, None),  # no change at all
                (c, JobState.SUBMITTED, None, None, "job-c", None),  # an id: recorded
                (d, JobState.FAILED, 1, "late", None, None),  # terminal is sticky
                ("no-such-job", JobState.RUNNING, None, None, None, None),
                (e, JobState.STOPPED, None, "stopped", None, None),
                (e, JobState.RUNNING, None, None, None, None),  # after a terminal one
            ]
        )
        assert changed == 4
        jobs = {j.job_id: j for j in await store.jobs(xgroup="g")}
        assert (jobs[a].state, jobs[a].exit_code, jobs[a].message) == (
            JobState.SUCCEEDED,
            0,
            "started",
        )
        assert jobs[a].platform_id == "pod-a" and jobs[a].details == {"k": 1, "node": "n1"}
        assert jobs[b].state is JobState.SUBMITTED and jobs[c].platform_id == "job-c"
        assert (jobs[d].state, jobs[d].exit_code, jobs[d].message) == (JobState.SUCCEEDED, 0, None)
        assert jobs[e].state is JobState.STOPPED
        states = {j: [s for _, s, _ in await store.events(j)] for j in (a, b, c, d, e)}
        assert states == {
            a: ["PLANNED", "SUBMITTED", "RUNNING", "SUCCEEDED"],
            b: ["PLANNED", "SUBMITTED"],
            c: ["PLANNED", "SUBMITTED", "SUBMITTED"],
            d: ["PLANNED", "SUCCEEDED"],
            e: ["PLANNED", "STOPPED"],
        }
        assert await store.transitions([(d, JobState.FAILED, 1, "forced", None, None)], force=True)
        assert (await store.job(d)).state is JobState.FAILED  # type: ignore[union-attr]


async def test_a_listed_record_is_the_one_the_constructor_makes(tmp_path: Path) -> None:
    async with Store(tmp_path / "c.db") as store:
        await _history(store, "g", experiments=2, attempts=1)
        listed = (await store.jobs(xgroup="g"))[0]
    fields = {f.name: getattr(listed, f.name) for f in dataclasses.fields(JobRecord)}
    built = JobRecord(**fields)
    assert listed == built and dataclasses.astuple(listed) == dataclasses.astuple(built)
    assert listed.platform is Platform.LOCAL and listed.state is JobState.PLANNED
    assert (
        isinstance(listed.args, tuple) and listed.spec_json() == '{"Cmd":["--i","0"],"attempt":0}'
    )
    with_dict = {k: v for k, v in vars(listed).items() if not k.startswith("_")}
    assert with_dict.keys() == {f.name for f in dataclasses.fields(JobRecord)}
