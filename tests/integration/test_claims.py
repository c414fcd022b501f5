"""Runs sharing a group and a store, interrupts in the middle of a container's
creation, failed creates and leftover containers, on the real engine."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import anyio
import pytest

from caliban import events as ev
from caliban.adapters.store import PlanItem, Planned
from caliban.core.names import new_job_id
from caliban.options import ProjectOptions, RunRequest
from caliban.platforms.local.containers import LocalBackend, container_config
from caliban.platforms.local.run import execute
from caliban.session import Session
from caliban.spec import JobState, Platform
from caliban.sweep.engine import StoreLaunch
from tests.conftest import (
    CALIBAN,
    RUN_ID,
    TEST_LABEL,
    MakeProject,
    docker_cli,
    labelled_containers,
    run_cli,
)

pytestmark = [pytest.mark.docker]

RECORD_PY = """
import argparse, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("--tag", default="")
p.add_argument("--sleep", type=float, default=0)
args = p.parse_args()
# One short O_APPEND write per job: whole lines even when jobs write at once.
with open("/out/ran.txt", "a") as f:
    f.write(f"{os.environ['CALIBAN_JOB_ID']} {args.tag}\\n")
time.sleep(args.sleep)
"""

SUMMARY = re.compile(r"^(\d+) job\(s\): (.*)$", re.MULTILINE)


def _summary_total(out: str) -> tuple[int, int]:
    """The job count of a run's summary line, and what its parts add up to."""
    (match,) = SUMMARY.findall(out)
    parts = [int(part.split()[0]) for part in match[1].split(", ")]
    return int(match[0]), sum(parts)


@pytest.mark.slow
def test_two_runs_of_one_group_share_the_work_and_keep_every_success(
    make_project: MakeProject, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    folder = make_project({"record.py": RECORD_PY})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"tag": [f"t{i}" for i in range(6)]}))
    built = run_cli(["build", "record.py"], cwd=folder, env=env)
    assert built.returncode == 0, built.stderr
    args = [
        CALIBAN, "run", "--experiment_config", "sweep.json", "--xgroup", "shared",
        "--max_parallel", "2", f"--docker_run_args=-v {out_dir}:/out",
        "record.py", "--", "--sleep", "3",
    ]  # fmt: skip
    # Started together: both skip the build and race for the same six jobs.
    procs = [
        subprocess.Popen(
            args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    ran = (out_dir / "ran.txt").read_text().split()
    job_ids, tags = ran[0::2], ran[1::2]
    # Each experiment ran exactly once, by exactly one process.
    assert sorted(tags) == [f"t{i}" for i in range(6)]
    assert len(set(job_ids)) == 6

    status = run_cli(["status", "--xgroup", "shared", "--max_jobs", "0", "--json"], cwd=folder,
                     env=env)  # fmt: skip
    jobs = json.loads(status.stdout)
    assert sorted(j["job_id"] for j in jobs) == sorted(job_ids)
    assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 6
    # The run that waited says who has the jobs, and each summary adds up.
    pids = [str(p.pid) for p in procs]
    told = [
        out
        for out, other in zip(outs, reversed(pids), strict=True)
        if f"by pid {other} since" in out
    ]
    assert told, outs
    for out in outs:
        assert _summary_total(out) == (6, 6), out
    assert labelled_containers(**{TEST_LABEL: RUN_ID, "caliban.xgroup": "shared"}) == []


# From "the create is about to be sent" to well after the container started:
# every step of create -> record RUNNING -> start -> follow gets interrupted.
DELAYS = [0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.03, 0.045, 0.07, 0.1,
          0.15, 0.22, 0.33, 0.5, 0.75, 1.1, 1.6]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("delay", DELAYS)
async def test_an_interrupt_anywhere_in_create_and_start_leaves_no_container(
    session: Session, make_project: MakeProject, delay: float
) -> None:
    launching = anyio.Event()

    def sink(event: ev.Event) -> None:
        if isinstance(event, ev.JobStateChanged) and event.state is JobState.PLANNED:
            launching.set()

    session.sink = sink
    request = RunRequest(
        project=ProjectOptions(folder=make_project(), entry="job.py"),
        experiments={"tag": ["x"]},
        script_args=("--sleep", "30"),
        xgroup="interrupted",
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(session.run, request)
        await launching.wait()
        await anyio.sleep(delay)
        tg.cancel_scope.cancel()
    store = await session.store()
    assert labelled_containers(**{"caliban.store": store.store_id}) == []
    (job,) = await store.jobs(xgroup="interrupted")
    assert job.state is JobState.STOPPED
    # ... and resubmittable.
    again = await session.resubmit(xgroup="interrupted", dry_run=True)
    assert [j.job_id for j in again.jobs] == [job.job_id]


async def test_a_failed_create_fails_that_job_only(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project()
    built = await session.build(ProjectOptions(folder=folder, entry="job.py"))
    store = await session.store()
    xgroup_id = await store.xgroup("one-bad", "tester")
    spec_id = await store.container_spec("local:test", built.tag, {}, "tester")
    items = []
    for i, image in enumerate([built.tag, "caliban-test-no-such-image:0", built.tag]):
        job_id = new_job_id()
        body = container_config(image=image, argv=["--tag", str(i)], job_id=job_id,
                                xgroup="one-bad", store_id=store.store_id,
                                base={"Labels": {TEST_LABEL: RUN_ID}})  # fmt: skip
        items.append(PlanItem(i, ("--tag", str(i)), {"tag": i}, job_id, image, body, {}))
    planned = await store.plan(xgroup_id=xgroup_id, container_spec_id=spec_id,
                               platform=Platform.LOCAL, user="tester", items=items)  # fmt: skip
    seen: list[ev.Event] = []
    backend = LocalBackend(await session.docker(), store_id=store.store_id, sink=seen.append)
    run_id = await store.open_run(lease=60)
    await store.claim(run_id, [p.job.job_id for p in planned])
    await execute(planned, backend=backend, run=StoreLaunch(store, seen.append, 3, run_id),
                  max_parallel=1, inventory=None, gpus_per_job=0)  # fmt: skip
    jobs = await store.jobs(job_ids=[p.job.job_id for p in planned])
    assert [j.state for j in jobs] == [JobState.SUCCEEDED, JobState.FAILED, JobState.SUCCEEDED]
    assert jobs[1].message is not None and "no such image" in jobs[1].message.lower()
    assert labelled_containers(**{"caliban.store": store.store_id}) == []


async def test_a_same_named_container_that_is_not_the_job_s_is_never_adopted(
    session: Session, make_project: MakeProject
) -> None:
    """A job left PLANNED by a crashed run is adopted through its container's name;
    one of that name the job never made fails the job, and is left as it was."""
    folder = make_project()
    built = await session.build(ProjectOptions(folder=folder, entry="job.py"))
    store = await session.store()
    xgroup_id = await store.xgroup("impostor", "tester")
    spec_id = await store.container_spec("local:test", built.tag, {}, "tester")
    job_id = new_job_id()
    body = container_config(image=built.tag, argv=["--tag", "x"], job_id=job_id,
                            xgroup="impostor", store_id=store.store_id,
                            base={"Labels": {TEST_LABEL: RUN_ID}})  # fmt: skip
    (planned,) = await store.plan(
        xgroup_id=xgroup_id, container_spec_id=spec_id, platform=Platform.LOCAL,
        user="tester", items=[PlanItem(0, ("--tag", "x"), {"tag": "x"}, job_id, built.tag,
                                       body, {})],
    )  # fmt: skip
    foreign = docker_cli(
        "create", f"--name=caliban-{job_id}", f"--label={TEST_LABEL}={RUN_ID}",
        "--label=someone.else=1", built.tag, "true",
    ).strip()  # fmt: skip
    seen: list[ev.Event] = []
    backend = LocalBackend(await session.docker(), store_id=store.store_id, sink=seen.append)
    run_id = await store.open_run(lease=60)
    await store.claim(run_id, [job_id])
    await execute([Planned("reconcile", planned.job)], backend=backend,
                  run=StoreLaunch(store, seen.append, 1, run_id),
                  max_parallel=1, inventory=None, gpus_per_job=0)  # fmt: skip
    (job,) = await store.jobs(job_ids=[job_id])
    assert job.state is JobState.FAILED, (job.state, job.message)
    assert job.message is not None and "caliban did not make for job" in job.message
    state = json.loads(docker_cli("inspect", foreign))[0]["State"]
    assert state["Status"] == "created"  # neither started nor removed
    docker_cli("rm", "-f", foreign)


async def test_stop_removes_leftover_containers_of_finished_jobs(
    session: Session, make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=folder, entry="job.py"),
            experiments={"tag": ["a"]},
            xgroup="leftovers",
        )
    )
    (job,) = result.jobs
    assert job.state is JobState.SUCCEEDED
    store = await session.store()
    image = job.image

    def leftover(job_id: str) -> str:
        labels = {TEST_LABEL: RUN_ID, "caliban.store": store.store_id, "caliban.job": job_id}
        flags = [f"--label={k}={v}" for k, v in labels.items()]
        return docker_cli("create", *flags, image, "true").strip()

    # One left by an interrupted run, one whose job this store never recorded.
    stale, unknown = leftover(job.job_id), leftover("not-a-job-of-this-store")
    dry = run_cli(["stop", "--dry_run"], cwd=folder, env=env)
    assert "1 leftover container(s) of finished jobs would be removed" in dry.stdout + dry.stderr
    assert len(labelled_containers(**{"caliban.store": store.store_id})) == 2
    stopped = run_cli(["stop", "--yes"], cwd=folder, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "removed 1 leftover container(s)" in stopped.stdout + stopped.stderr
    remaining = labelled_containers(**{"caliban.store": store.store_id})
    assert [c for c in remaining if stale.startswith(c)] == []
    assert [c for c in remaining if unknown.startswith(c)] != []
    docker_cli("rm", "-f", unknown)
