"""When a Vertex job of a capacity ladder moves, and where to (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from caliban.platforms.vertex import ladder
from caliban.platforms.vertex import scheduling as sched
from caliban.spec import JobRecord, JobState, Platform

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)
LADDER = [
    {"region": "us-central1", "rung": "flex:3600s", "image": "us/img"},
    {"region": "europe-west4", "rung": "spot", "image": "eu/img"},
]
BODY: dict[str, Any] = {
    "labels": {"caliban_job": "old"},
    "jobSpec": {
        "workerPoolSpecs": [
            {
                "machineSpec": {"machineType": "g2-standard-8"},
                "containerSpec": {"imageUri": "us/img"},
            }
        ],
        "scheduling": {"strategy": "FLEX_START", "maxWaitDuration": "3600s", "timeout": "600s"},
    },
}


def _job(
    state: JobState, *, age_s: float = 0, message: str | None = None, **details: Any
) -> JobRecord:
    base = {"project": "p", "region": "us-central1", "ladder": LADDER, "step": 0,
            "attempt": 1, "queue_timeout_s": 1800}  # fmt: skip
    base.update(details)
    return JobRecord(
        job_id="old", platform=Platform.VERTEX, state=state, xgroup="g", experiment_id=1,
        index=0, args=(), kwargs={}, image="i", spec=BODY, details=base, platform_id="n",
        exit_code=None, message=message, log_path=None, user="u",
        created=(NOW - timedelta(seconds=age_s)).isoformat(), updated="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("job", "why"),
    [
        (_job(JobState.SUBMITTED, age_s=1801, vertex_state="JOB_STATE_PENDING"), ladder.WAITED),
        (_job(JobState.SUBMITTED, age_s=1799, vertex_state="JOB_STATE_PENDING"), None),
        (_job(JobState.RUNNING, age_s=99999, vertex_state="JOB_STATE_RUNNING"), None),
        (_job(JobState.FAILED, vertex_state="JOB_STATE_EXPIRED"), ladder.EXPIRED),
        (_job(JobState.FAILED, error_code=8, message="no machines"), ladder.STOCKOUT),
        (
            _job(JobState.FAILED, message="The zone 'x' does not have enough resources available"),
            ladder.STOCKOUT,
        ),
        # the user's code: never moved
        (_job(JobState.FAILED, error_code=13, message="exited with a non-zero status of 1"), None),
        (_job(JobState.FAILED, error_code=8, message="RESOURCE_EXHAUSTED: Out of memory"), None),
        # nowhere left to go
        (_job(JobState.FAILED, step=1, vertex_state="JOB_STATE_EXPIRED"), None),
        (_job(JobState.SUBMITTED, step=1, age_s=99999, vertex_state="JOB_STATE_QUEUED"), None),
    ],
)
def test_reasons_to_move(job: JobRecord, why: str | None) -> None:
    assert ladder.reason(job, now=NOW) == why


def test_preemption_needs_recoveries_left() -> None:
    job = _job(JobState.FAILED, message="workerpool0-0 was preempted", ladder=None)
    assert ladder.reason(job, now=NOW) is None
    assert ladder.reason(job, now=NOW, max_recoveries=1) == ladder.PREEMPTED
    spent = _job(JobState.FAILED, message="was preempted", ladder=None, recoveries=1)
    assert ladder.reason(spent, now=NOW, max_recoveries=1) is None


def test_the_next_attempt_goes_to_the_next_step_keeping_timeout_and_image_per_region() -> None:
    job = _job(JobState.FAILED, vertex_state="JOB_STATE_EXPIRED", console_url="x")
    body, details = ladder.moved(job, ladder.EXPIRED, job_id="new", base=ladder.base_of(job.spec))
    assert body["jobSpec"]["scheduling"] == {"strategy": "SPOT", "timeout": "600s"}
    assert body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"] == "eu/img"
    assert details["region"] == "europe-west4" and details["step"] == 1
    assert details["attempt"] == 2 and details["moved_from"] == "old"
    assert "console_url" not in details and "vertex_state" not in details
    assert BODY["jobSpec"]["scheduling"]["strategy"] == "FLEX_START"  # the record is untouched


def test_a_reservation_rung_sets_and_a_standard_rung_clears_the_affinity() -> None:
    name = "projects/p/zones/us-central1-a/reservations/r"
    body = ladder.with_placement(
        {"jobSpec": {"workerPoolSpecs": [{}]}},
        sched.Rung("reservation", reservation=name).scheduling(sched.Scheduling()),
        image="img",
    )
    machine = body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]
    assert machine["reservationAffinity"]["values"] == [name]
    body = ladder.with_placement(body, sched.Scheduling(), image="img")
    assert "reservationAffinity" not in body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]
    assert "scheduling" not in body["jobSpec"]
