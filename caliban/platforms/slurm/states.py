"""A Slurm task's state as caliban records it, read from what the cluster says (pure).

``squeue --json`` while slurmctld remembers a job, ``scontrol show job -o`` /
jobcomp/filetxt lines afterwards, ``sacct`` where accounting runs: each comes
out as :class:`Seen` records (array id, task index, name, comment, status), with
Slurm's raw wait statuses turned back into exit codes. Without slurmdbd there
is no ``sacct``: a job's state comes from ``squeue --json`` while slurmctld
remembers it (``MinJobAge``, 300 s by default) and from the
``jobcomp/filetxt`` file afterwards (one line per finished job).

Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from caliban.platforms.slurm.limits import parse_key_values
from caliban.spec import JobState


@dataclass(frozen=True)
class Status:
    """A task's state as caliban records it, and Slurm's own word for it."""

    state: JobState
    slurm_state: str
    exit_code: int | None = None
    message: str | None = None


_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SPECIAL_EXIT"}
_RUNNING = {"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
# Ends that are not the program's own failure: said in the message, kept FAILED
# so `caliban resubmit` runs them again.
_ENDED_BY_SLURM = {
    "TIMEOUT": "the time limit was reached",
    "OUT_OF_MEMORY": "the task ran out of memory",
    "PREEMPTED": "the task was preempted",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "the deadline passed",
    "REVOKED": "the job was revoked",
}


def exit_from_wait_status(raw: int) -> int:
    """A raw wait status (``squeue --json``'s ``exit_code``) as a shell exit code."""
    signal = raw & 0x7F
    return 128 + signal if signal else (raw >> 8) & 0xFF


def exit_from_pair(text: str) -> int | None:
    """``ExitCode=3:0`` (code:signal, from scontrol and jobcomp) as a shell exit code."""
    code, _, sig = text.partition(":")
    try:
        c, s = int(code), int(sig or 0)
    except ValueError:
        return None
    return 128 + s if s else c


def status_of(slurm_state: str, exit_code: int | None, reason: str | None = None) -> Status:
    """Slurm's state word (``CANCELLED by 0`` included) as caliban's JobState."""
    word = slurm_state.split()[0].upper() if slurm_state.strip() else "UNKNOWN"
    if word in _PENDING:
        why = f"pending: {reason}" if reason and reason != "None" else None
        return Status(JobState.SUBMITTED, word, message=why)
    if word in _RUNNING:
        return Status(JobState.RUNNING, word)
    if word == "COMPLETED":
        return Status(JobState.SUCCEEDED, word, exit_code if exit_code is not None else 0)
    if word == "CANCELLED":
        return Status(JobState.STOPPED, word, exit_code, "cancelled on Slurm")
    if word == "FAILED":
        code = exit_code if exit_code else 1
        return Status(JobState.FAILED, word, code, f"exited with code {code}")
    if word in _ENDED_BY_SLURM:
        return Status(JobState.FAILED, word, exit_code, f"{word}: {_ENDED_BY_SLURM[word]}")
    return Status(JobState.UNKNOWN, word, exit_code, f"Slurm state {word}")


def expand_tasks(text: str) -> list[int]:
    """Task ids of a pending array's ``ArrayTaskId`` / ``array_task_string``
    (``2-3%2``, ``1,4-9:2``)."""
    spec = text.split("%", 1)[0].strip()
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        first, last = int(lo), int(hi or lo)
        out += range(first, last + 1, int(step or 1))
    return out


@dataclass(frozen=True)
class Seen:
    """One task (or single job) in Slurm's answer, keyed by its platform id."""

    key: str
    array_job_id: str
    task: int | None
    name: str
    comment: str
    status: Status


def _keys(
    array_job_id: int, job_id: int, task: object, task_string: str
) -> list[tuple[str, str, int | None]]:
    if not array_job_id:  # a single job
        return [(str(job_id), str(job_id), None)]
    if isinstance(task, int):
        return [(f"{array_job_id}_{task}", str(array_job_id), task)]
    return [(f"{array_job_id}_{t}", str(array_job_id), t) for t in expand_tasks(task_string)]


def _num(value: object) -> int:
    # 22.05 prints plain numbers; later versions wrap them as {"set": .., "number": ..}.
    if isinstance(value, dict):
        value = value.get("number", 0) if value.get("set", True) else 0
    return int(value) if isinstance(value, (int, float)) else 0


def parse_squeue_json(text: str) -> Iterator[Seen]:
    """Every task ``squeue --json`` reports, pending array tasks one by one."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"squeue --json printed no JSON: {exc}") from None
    for job in doc.get("jobs", []):
        state = job.get("job_state", "")
        if isinstance(state, list):  # newer versions: a list of flags
            state = state[0] if state else ""
        raw = _num(job.get("exit_code", 0))
        ended = str(state).upper() not in _PENDING | _RUNNING
        status = status_of(
            str(state), exit_from_wait_status(raw) if ended else None, job.get("state_reason")
        )
        task = job.get("array_task_id")
        if isinstance(task, dict):
            task = task.get("number") if task.get("set") else None
        for key, array_id, index in _keys(
            _num(job.get("array_job_id", 0)),
            _num(job.get("job_id", 0)),
            task,
            str(job.get("array_task_string") or ""),
        ):
            yield Seen(
                key, array_id, index, str(job.get("name", "")), str(job.get("comment", "")), status
            )


def parse_records(text: str) -> Iterator[Seen]:
    """Tasks in ``scontrol show job -o`` output or jobcomp/filetxt lines (no comment there)."""
    for line in text.splitlines():
        kv = parse_key_values(line)
        if "JobId" not in kv or "JobState" not in kv:
            continue
        exit_code = exit_from_pair(kv.get("ExitCode", "0:0"))
        word = kv["JobState"].upper()
        status = status_of(
            word, exit_code if word not in _PENDING | _RUNNING else None, kv.get("Reason")
        )
        array = kv.get("ArrayJobId")
        task = kv.get("ArrayTaskId")
        keys: list[tuple[str, str, int | None]]
        if array and task is not None and array != "0":
            if task.isdigit():
                keys = [(f"{array}_{task}", array, int(task))]
            else:
                keys = [(f"{array}_{t}", array, t) for t in expand_tasks(task)]
        else:
            keys = [(kv["JobId"], kv["JobId"], None)]
        for key, array_id, index in keys:
            yield Seen(
                key,
                array_id,
                index,
                kv.get("JobName", kv.get("Name", "")),
                kv.get("Comment", ""),
                status,
            )


def parse_sacct(text: str) -> Iterator[Seen]:
    """``sacct -n -P -X --format=JobID,JobName,State,ExitCode`` lines (clusters with
    slurmdbd): ``123_4|caliban-B|FAILED|3:0``."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_id, name, state, code = parts[:4]
        array, sep, task = job_id.partition("_")
        ended = state.split()[0].upper() not in _PENDING | _RUNNING if state else False
        status = status_of(state, exit_from_pair(code) if ended else None)
        if sep and task.isdigit():
            yield Seen(job_id, array, int(task), name, "", status)
        elif not sep:
            yield Seen(job_id, job_id, None, name, "", status)
