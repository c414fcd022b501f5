"""`caliban watch` and the Vertex capacity ladder against the Vertex stand-in: a region
without capacity, flex-start expiry, a stockout, Spot preemption and slow cancellation."""

from __future__ import annotations

import itertools
import json
import math
import signal
from pathlib import Path

import anyio

from caliban.platforms.vertex import cloudlog
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from tests.conftest import CALIBAN, MakeProject
from tests.fakes.cloudlogging import FakeLogging
from tests.fakes.vertex import FakeVertex
from tests.fakes.vertex_jobs import (
    CANCELLED,
    PREEMPTED_ERROR_MESSAGE,
    STOCKOUT_ERROR,
    SUCCEEDED,
    FakeJob,
    Lifecycle,
)
from tests.integration.cloud_helpers import IMAGE, JOB_LABEL, caliban, cli_env
from tests.integration.conftest import OpenSession, VertexRequest

NO_CAPACITY = Lifecycle(pending=math.inf)
FAST = 0.05


def _one_live_at_a_time(vertex: FakeVertex, rows: list[JobRecord]) -> None:
    """Every attempt of an experiment ended on Vertex before the next was created."""
    by_experiment: dict[int, list[JobRecord]] = {}
    for job in rows:
        by_experiment.setdefault(job.experiment_id, []).append(job)
    remote = {j.labels[JOB_LABEL]: j for j in vertex.jobs}
    for attempts in by_experiment.values():
        made = sorted(
            (remote[a.job_id] for a in attempts if a.job_id in remote), key=lambda j: j.seq
        )
        for old, new in itertools.pairwise(made):
            assert old.end_time is not None and old.end_time <= new.create_time, (old, new)


async def test_a_sweep_over_two_regions_one_without_capacity_ends_succeeded(
    vertex_server: FakeVertex, vertex_request: VertexRequest, cloud_session: OpenSession
) -> None:
    vertex_server.lifecycle = Lifecycle()
    vertex_server.capacity[("us-central1", "*")] = NO_CAPACITY
    vertex_server.cancel_delay = 0.3  # CANCELLING before CANCELLED
    req = vertex_request(
        experiments={"i": list(range(4))},
        xgroup="ladder",
        regions=("us-central1", "europe-west4"),
        capacity="standard",
        queue_timeout="1s",
    )
    async with cloud_session() as s:
        first = await s.cloud(req)
        assert first.ok
        result = await s.watch(xgroup="ladder", interval=FAST)
        assert result.ok, [(j.state, j.message) for j in result.jobs]
        rows = await (await s.store()).jobs(xgroup="ladder", per_experiment=0)
    latest = result.jobs
    assert [j.state for j in latest] == [JobState.SUCCEEDED] * 4
    assert {j.details["region"] for j in latest} == {"europe-west4"}
    moved = [j for j in latest if j.details.get("moved_from")]
    assert sorted(j.index for j in moved) == [0, 2]  # the two that started in us-central1
    assert all(j.details["attempt"] == 2 and j.details["move_reason"] == "waited" for j in moved)
    assert vertex_server.duplicates(JOB_LABEL) == {}
    assert len(vertex_server.jobs) == 6 == len(rows)
    central = [j for j in vertex_server.jobs if j.location == "us-central1"]
    assert [j.state for j in central] == [CANCELLED, CANCELLED]
    assert all("JOB_STATE_CANCELLING" in j.history for j in central)
    _one_live_at_a_time(vertex_server, rows)


async def test_flex_expiry_then_a_stockout_climb_to_the_standard_rung(
    vertex_server: FakeVertex, vertex_request: VertexRequest, cloud_session: OpenSession
) -> None:
    vertex_server.lifecycle = Lifecycle()
    vertex_server.capacity[("us-central1", "FLEX_START")] = Lifecycle(
        waiting_outcome="JOB_STATE_EXPIRED"
    )
    vertex_server.capacity[("us-central1", "SPOT")] = Lifecycle(
        waiting_outcome="JOB_STATE_FAILED", waiting_error=STOCKOUT_ERROR
    )
    req = vertex_request(
        experiments={"i": [0, 1]},
        xgroup="climb",
        gpu_spec="1xL4",
        capacity="flex:1h,spot,standard",
    )
    async with cloud_session() as s:
        assert (await s.cloud(req)).ok
        result = await s.watch(xgroup="climb", interval=FAST)
        rows = await (await s.store()).jobs(xgroup="climb", per_experiment=0)
    assert result.ok
    assert [j.details["rung"] for j in result.jobs] == ["standard", "standard"]
    assert [j.details["attempt"] for j in result.jobs] == [3, 3]
    reasons = sorted(str(j.details.get("move_reason")) for j in rows)
    assert reasons == ["None", "None", "expired", "expired", "no_capacity", "no_capacity"]
    strategies = [
        j.spec.get("jobSpec", {}).get("scheduling", {}).get("strategy") for j in vertex_server.jobs
    ]
    assert sorted(map(str, strategies)) == ["FLEX_START"] * 2 + ["None"] * 2 + ["SPOT"] * 2
    assert vertex_server.duplicates(JOB_LABEL) == {}
    _one_live_at_a_time(vertex_server, rows)


async def test_preempted_spot_jobs_come_back_and_user_failures_never_move(
    vertex_server: FakeVertex, vertex_request: VertexRequest, cloud_session: OpenSession
) -> None:
    vertex_server.lifecycle = Lifecycle()

    def arg(job: FakeJob) -> str:
        return str(job.spec["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"][-1])

    def spot(job: FakeJob) -> Lifecycle:
        # Experiment 1's code fails; the first attempt of experiment 0 is preempted.
        if arg(job) == "1":
            return Lifecycle(outcome="JOB_STATE_FAILED")
        if job.seq == min(j.seq for j in vertex_server._jobs if arg(j) == "0"):
            return Lifecycle(
                outcome="JOB_STATE_FAILED", error_code=14, error_message=PREEMPTED_ERROR_MESSAGE
            )
        return Lifecycle()

    vertex_server.capacity[("us-central1", "SPOT")] = spot
    req = vertex_request(experiments={"i": [0, 1]}, xgroup="spot", spot=True)
    async with cloud_session() as s:
        assert (await s.cloud(req)).ok
        result = await s.watch(xgroup="spot", interval=FAST, max_recoveries=1)
    assert not result.ok
    zero, one = result.jobs
    assert zero.state is JobState.SUCCEEDED and zero.details["recoveries"] == 1
    assert one.state is JobState.FAILED and "moved_from" not in one.details
    assert len(vertex_server.jobs) == 3


async def test_kill_9_of_watch_mid_move_then_a_restart_changes_nothing(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
) -> None:
    folder = make_project()
    env = cli_env(tmp_path, service_account_file, vertex_server)
    vertex_server.lifecycle = Lifecycle()
    vertex_server.capacity[("us-central1", "*")] = NO_CAPACITY
    vertex_server.cancel_delay = 2.0  # watch is killed while it waits for CANCELLED
    (folder / "sweep.json").write_text('{"i": [0, 1, 2]}')
    args = ["cloud", "--image_tag", IMAGE, "--xgroup", "k9", "--experiment_config"]
    args += [str(folder / "sweep.json"), "--region", "us-central1,europe-west4"]
    args += ["--capacity", "standard", "--queue_timeout", "1s", "job.py"]
    done = await caliban(args, cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    proc = await anyio.open_process(
        [CALIBAN, "watch", "--xgroup", "k9", "--interval", "0.1"], cwd=folder, env=env
    )
    for _ in range(1200):  # the fake changes state as it is read: there is no event to await
        if any(j.state == "JOB_STATE_CANCELLING" for j in vertex_server.jobs):
            break
        await anyio.sleep(0.05)
    else:
        raise AssertionError("watch never cancelled a job waiting in us-central1")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    again = await caliban(["watch", "--xgroup", "k9", "--interval", "0.1"], cwd=folder, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    status = await caliban(["status", "--xgroup", "k9", "--json"], cwd=folder, env=env)
    latest = json.loads(status.stdout)
    table = await caliban(["status", "--xgroup", "k9"], cwd=folder, env=env)
    assert table.stdout.count("vertex #2 europe-west4 standard") == 2, table.stdout
    assert table.stdout.count("vertex #1 europe-west4 standard") == 1, table.stdout
    assert [j["state"] for j in latest] == ["SUCCEEDED"] * 3
    assert vertex_server.duplicates(JOB_LABEL) == {}
    assert len(vertex_server.jobs) == 5  # 3 first attempts, 2 moved out of us-central1
    assert sum(j.state == SUCCEEDED for j in vertex_server.jobs) == 3


async def test_an_attempt_that_succeeds_while_being_cancelled_keeps_its_answer(
    vertex_server: FakeVertex,
    logging_server: FakeLogging,
    vertex_request: VertexRequest,
    tmp_path: Path,
    session_env: dict[str, str],
) -> None:
    """A job that ends SUCCEEDED while watch cancels it to move it: the move is not
    made, and the experiment's latest attempt leads `results` and `logs` to its output."""
    vertex_server.lifecycle = Lifecycle()
    vertex_server.capacity[("us-central1", "*")] = NO_CAPACITY
    vertex_server.cancel_delay = 0.3
    vertex_server.cancel_outcome = SUCCEEDED  # it finished before the cancel took effect
    req = vertex_request(
        experiments={"i": [0]},
        xgroup="race",
        regions=("us-central1", "europe-west4"),
        capacity="standard",
        queue_timeout="1s",
    )
    env = {**session_env, cloudlog.ENDPOINT_ENV: logging_server.url}
    async with Session(home=tmp_path / "home", environ=env) as s:
        first = await s.cloud(req)
        assert first.ok
        (remote,) = vertex_server.jobs
        logging_server.add(remote, "epoch 1", '{"accuracy": 0.93}')
        result = await s.watch(xgroup="race", interval=FAST)
        (latest,) = result.jobs
        (answer,) = await s.results(xgroup="race")
        output = "".join([chunk async for chunk in s.logs(latest.job_id)])
    (old,) = first.jobs
    assert latest.job_id != old.job_id and latest.details["moved_from"] == old.job_id
    assert latest.state is JobState.SUCCEEDED and latest.exit_code == old.exit_code
    assert latest.message == f"not moved: attempt {old.job_id} succeeded"
    assert latest.details["ran_as"] == old.job_id
    assert latest.details["region"] == "us-central1"  # where the answer came from
    assert latest.platform_id == remote.name
    assert answer.metrics == {"accuracy": 0.93}
    assert output == 'epoch 1\n{"accuracy": 0.93}\n'
    assert len(vertex_server.jobs) == 1  # the move never reached Vertex
