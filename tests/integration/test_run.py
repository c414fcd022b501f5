"""Local sweeps on the real engine: parallelism bounds, GPU pinning, failures, records."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from caliban import events as ev
from caliban.errors import ValidationError
from caliban.options import ProjectOptions, RunRequest
from caliban.session import Session
from caliban.spec import JobState
from tests.conftest import MakeProject, job_reports, labelled_containers

pytestmark = [pytest.mark.docker]


def _overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _max_concurrency(reports: list[dict[str, object]]) -> int:
    points = sorted(
        [(float(str(r["start"])), 1) for r in reports]
        + [(float(str(r["end"])), -1) for r in reports]
    )
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


async def test_sweep_runs_every_job_and_records_it(
    session: Session, make_project: MakeProject
) -> None:
    seen: list[ev.Event] = []
    session.sink = seen.append
    folder = make_project()
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=folder, entry="job.py"),
            experiments={"tag": ["a", "b", "c"], "sleep": [0, 0.1]},
            script_args=("--fixed", "1"),
            xgroup="sweep-1",
            max_parallel=3,
        )
    )
    assert result.ok and len(result.jobs) == 6 and result.xgroup == "sweep-1"
    assert all(j.state is JobState.SUCCEEDED and j.exit_code == 0 for j in result.jobs)
    # Script args first, then the experiment's flags in config order, first key fastest.
    assert [list(j.args) for j in result.jobs[:2]] == [
        ["--fixed", "1", "--tag", "a", "--sleep", "0"],
        ["--fixed", "1", "--tag", "b", "--sleep", "0"],
    ]
    # Output streamed with a job label, and kept in one log file per job.
    outputs = [e for e in seen if isinstance(e, ev.JobOutput)]
    assert {e.job_id for e in outputs} == {j.job_id for j in result.jobs}
    for job in result.jobs:
        assert job.log_path is not None
        (report,) = job_reports(Path(job.log_path).read_text())
        assert report["job"] == job.job_id and report["rest"] == ["--fixed", "1"]
    store = await session.store()
    events = await store.events(result.jobs[0].job_id)
    assert [state for _, state, _ in events] == ["PLANNED", "RUNNING", "SUCCEEDED"]
    assert labelled_containers(**{"caliban.store": store.store_id}) == []


async def test_max_parallel_bounds_running_containers(
    session: Session, make_project: MakeProject
) -> None:
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=make_project(), entry="job.py"),
            experiments={"tag": [str(i) for i in range(6)]},
            script_args=("--sleep", "0.8"),
            max_parallel=2,
        )
    )
    assert result.ok
    reports = [job_reports(Path(j.log_path or "").read_text())[0] for j in result.jobs]
    assert _max_concurrency(reports) == 2  # parallel, and never more than asked


@pytest.mark.parametrize("per_job", [1, 2])
async def test_gpu_ids_are_never_shared(
    session: Session, make_project: MakeProject, per_job: int
) -> None:
    """4 simulated GPUs: every container reports (from inside) the ids it held."""
    session.environ = {**session.environ, "CALIBAN_SIMULATED_GPUS": "0,1,2,3"}
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=make_project(), entry="job.py", use_gpu=True),
            experiments={"tag": [str(i) for i in range(8)]},
            script_args=("--sleep", "1.5"),
            gpus_per_job=per_job,
        )
    )
    assert result.ok, [(j.state, j.message) for j in result.jobs]
    reports = [job_reports(Path(j.log_path or "").read_text())[0] for j in result.jobs]
    for report in reports:
        held = str(report["gpus"]).split(",")
        assert len(held) == per_job and set(held) <= {"0", "1", "2", "3"}
        assert report["nvidia"] == report["gpus"]
        assert report["cuda"] == ",".join(str(i) for i in range(per_job))
    for a, b in itertools.combinations(reports, 2):
        if _overlaps(a, b):  # type: ignore[arg-type]
            assert not set(str(a["gpus"]).split(",")) & set(str(b["gpus"]).split(","))
    # Never more jobs at once than GPU slots, and jobs did run side by side (so the
    # exclusivity check above compared real overlaps). How close to the full slot
    # count a loaded machine gets is the benchmark's business, not this test's.
    slots = 4 // per_job
    assert min(2, slots) <= _max_concurrency(reports) <= slots
    store = await session.store()
    job = (await store.jobs(job_ids=[result.jobs[0].job_id]))[0]
    assert len(job.details["gpu_ids"]) == per_job  # type: ignore[arg-type]


async def test_a_failing_job_does_not_stop_the_sweep(
    session: Session, make_project: MakeProject
) -> None:
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=make_project(), entry="job.py"),
            experiments={"exit": [0, 3, 0]},
            max_parallel=1,
        )
    )
    assert not result.ok
    assert [(j.state, j.exit_code) for j in result.jobs] == [
        (JobState.SUCCEEDED, 0),
        (JobState.FAILED, 3),
        (JobState.SUCCEEDED, 0),
    ]


async def test_rerunning_the_same_group_only_runs_what_is_missing(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project()
    request = RunRequest(
        project=ProjectOptions(folder=folder, entry="job.py"),
        experiments={"exit": [0, 4], "tag": ["x"]},
        xgroup="resume",
    )
    first = await session.run(request)
    assert [j.state for j in first.jobs] == [JobState.SUCCEEDED, JobState.FAILED]
    again = await session.run(request)
    assert again.skipped == 1
    # The failed experiment got a new job; the succeeded one was left alone.
    assert again.jobs[0].job_id == first.jobs[0].job_id
    assert again.jobs[1].job_id != first.jobs[1].job_id
    store = await session.store()
    assert len(await store.jobs(xgroup="resume")) == 3


async def test_gpu_mode_without_gpus_is_refused_before_anything_runs(
    session: Session, make_project: MakeProject
) -> None:
    with pytest.raises(ValidationError, match="no GPU was found"):
        await session.run(
            RunRequest(project=ProjectOptions(folder=make_project(), entry="job.py", use_gpu=True))
        )
    with pytest.raises(ValidationError, match="more than the 2 GPU"):
        await session.run(
            RunRequest(
                project=ProjectOptions(folder=make_project(), entry="job.py", use_gpu=True),
                gpu_ids=("0", "1"),
                gpus_per_job=3,
            )
        )
    assert not session.db_path.exists()


async def test_resubmit_runs_failed_jobs_again_with_their_recorded_spec(
    session: Session, make_project: MakeProject
) -> None:
    first = await session.run(
        RunRequest(
            project=ProjectOptions(folder=make_project(), entry="job.py"),
            experiments={"exit": [0, 5], "tag": ["r"]},
            xgroup="again",
        )
    )
    failed = next(j for j in first.jobs if j.state is JobState.FAILED)
    dry = await session.resubmit(xgroup="again", dry_run=True)
    assert [j.job_id for j in dry.jobs] == [failed.job_id] and dry.dry_run

    again = await session.resubmit(xgroup="again")
    (rerun,) = again.jobs
    assert rerun.job_id != failed.job_id and rerun.experiment_id == failed.experiment_id
    assert rerun.args == failed.args and rerun.image == failed.image
    assert (rerun.state, rerun.exit_code) == (JobState.FAILED, 5)  # it fails again, as it should
    (report,) = job_reports(Path(rerun.log_path or "").read_text())
    assert report["job"] == rerun.job_id  # the recorded spec, re-addressed to the new job

    everything = await session.resubmit(xgroup="again", all_jobs=True)
    assert len(everything.jobs) == 2
    store = await session.store()
    assert len(await store.jobs(xgroup="again")) == 5
