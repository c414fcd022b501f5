"""The fake Vertex AI's job records: state machine, timestamps and wire rendering.

Time is modelled with two clocks: an injectable monotonic ``clock`` drives the automatic
lifecycle (so a test can control it), and wall-clock RFC 3339 timestamps are derived from the
job's creation time plus the monotonic offset, so they stay consistent with each other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .vertex_schema import TERMINAL_STATES

QUEUED, PENDING, RUNNING = "JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"
SUCCEEDED, FAILED = "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"
CANCELLING, CANCELLED = "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"

# What a cancelled CustomJob carries in ``error``: the proto Status, numeric code 1 (CANCELLED).
CANCELLED_ERROR = {"code": 1, "message": "CANCELED"}
# What a job that failed on its own while being cancelled reports.
CANCEL_RACE_FAILURE = "The replica workerpool0-0 exited with a non-zero status of 1."


def rfc3339(when: datetime) -> str:
    """Google's timestamp form: UTC, microseconds, a literal Z."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Lifecycle:
    """Automatic progression QUEUED -> PENDING -> RUNNING -> ``outcome``.

    Each number is how long (in ``clock`` seconds) a job stays in that state. Transitions are
    applied lazily whenever the fake reads a job, so no background task has to be cleaned up
    and a test with an injected clock gets exactly the states it asks for.
    """

    queued: float = 0.0
    pending: float = 0.0
    running: float = 0.0
    outcome: str = SUCCEEDED
    # Used when ``outcome`` is JOB_STATE_FAILED: the proto Status the job ends with.
    error_code: int = 13
    error_message: str = "The replica workerpool0-0 exited with a non-zero status of 1."
    # Instead of RUNNING after ``pending``, end here: JOB_STATE_EXPIRED (a flex-start
    # wait that ran out) or JOB_STATE_FAILED with ``waiting_error`` (a stockout).
    waiting_outcome: str | None = None
    waiting_error: dict[str, Any] | None = None


# What Vertex reports when a zone has no machines for a job (google.rpc code 8,
# RESOURCE_EXHAUSTED, with Compute Engine's stockout wording).
STOCKOUT_ERROR = {
    "code": 8,
    "message": "The zone 'us-central1-a' does not have enough resources available to fulfill "
    "the request. Try a different zone, or try again later.",
}
PREEMPTED_ERROR_MESSAGE = "The replica workerpool0-0 was preempted (Spot VM reclaimed)."


@dataclass
class FakeJob:
    """One CustomJob the fake accepted, plus what tests want to know about it."""

    name: str  # projects/{PROJECT_NUMBER}/locations/{loc}/customJobs/{id}
    job_id: str
    project: str  # the project as written in the create URL (id or number)
    project_number: str
    location: str
    body: dict[str, Any]  # the create request body exactly as received
    spec: dict[str, Any]  # the canonical (wire) form of the writable fields
    seq: int  # creation order, also the list order key
    created_at: float  # clock() at creation
    create_time: datetime
    state: str = QUEUED
    entered_at: float = 0.0  # clock() when the current state began
    update_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    error: dict[str, Any] | None = None
    deleted: bool = False
    manual: bool = False  # advance()/fail() took over: the automatic lifecycle stops
    history: list[str] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        """The job's labels (empty dict when none)."""
        labels: dict[str, str] = self.spec.get("labels", {})
        return labels

    @property
    def display_name(self) -> str:
        """The job's displayName."""
        return str(self.spec.get("displayName", ""))

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change state by itself."""
        return self.state in TERMINAL_STATES

    def wall(self, at: float) -> datetime:
        """The wall-clock time matching ``clock()`` value ``at``."""
        return self.create_time + timedelta(seconds=max(0.0, at - self.created_at))

    def set_state(self, state: str, at: float, error: dict[str, Any] | None = None) -> None:
        """Move to ``state`` at clock time ``at``, filling the output-only timestamps."""
        when = self.wall(at)
        self.state = state
        self.entered_at = at
        self.update_time = when
        self.history.append(state)
        if state == RUNNING and self.start_time is None:
            self.start_time = when
        if state in TERMINAL_STATES:
            if state == SUCCEEDED and self.start_time is None:
                self.start_time = when
            self.end_time = when
        if error is not None:
            self.error = error
        elif state == CANCELLED and self.error is None:
            self.error = dict(CANCELLED_ERROR)

    def tick(
        self,
        now: float,
        lifecycle: Lifecycle | None,
        cancel_delay: float,
        cancel_outcome: str = CANCELLED,
    ) -> None:
        """Apply every transition due by ``now`` (cancellation first, then the lifecycle).

        A cancelled job stays CANCELLING for ``cancel_delay``, then ends ``cancel_outcome``:
        CANCELLED, or SUCCEEDED/FAILED when it finished before the cancel took effect.
        """
        while True:
            if self.state == CANCELLING:
                if now - self.entered_at < cancel_delay:
                    return
                error = None
                if cancel_outcome == FAILED:
                    error = {"code": 13, "message": CANCEL_RACE_FAILURE}
                self.set_state(cancel_outcome, self.entered_at + cancel_delay, error)
                continue
            if self.manual or lifecycle is None:
                return
            stay = {
                QUEUED: lifecycle.queued,
                PENDING: lifecycle.pending,
                RUNNING: lifecycle.running,
            }
            nxt = {QUEUED: PENDING, PENDING: RUNNING, RUNNING: lifecycle.outcome}
            if lifecycle.waiting_outcome is not None:
                nxt[PENDING] = lifecycle.waiting_outcome
            if self.state not in stay or now - self.entered_at < stay[self.state]:
                return
            target = nxt[self.state]
            error = None
            if self.state == PENDING and lifecycle.waiting_outcome is not None:
                error = copy.deepcopy(lifecycle.waiting_error)
            elif target == FAILED:
                error = {"code": lifecycle.error_code, "message": lifecycle.error_message}
            self.set_state(target, self.entered_at + stay[self.state], error)

    def to_json(self) -> dict[str, Any]:
        """The CustomJob as the API returns it (a fresh copy each time)."""
        out: dict[str, Any] = {"name": self.name}
        out.update(copy.deepcopy({k: v for k, v in self.spec.items() if k != "labels"}))
        out["state"] = self.state
        out["createTime"] = rfc3339(self.create_time)
        if self.start_time is not None:
            out["startTime"] = rfc3339(self.start_time)
        if self.end_time is not None:
            out["endTime"] = rfc3339(self.end_time)
        out["updateTime"] = rfc3339(self.update_time or self.create_time)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.error is not None:
            out["error"] = dict(self.error)
        return out
