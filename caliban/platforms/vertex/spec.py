"""Vertex AI CustomJob request bodies and state mapping. Pure.

One job per experiment: a single worker pool (the chief) running the project
image with the experiment's arguments. The image's entrypoint runs the user's
script, so the body sets ``args`` and never ``command``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from caliban.core.accelerators import AcceleratorSpec
from caliban.core.labels import job_labels
from caliban.platforms.vertex.scheduling import Scheduling
from caliban.spec import JobState

# Labels caliban relies on; they always win over user and argument labels.
JOB_ID_LABEL = "caliban_job"
STORE_LABEL = "caliban_store"
XGROUP_LABEL = "caliban_xgroup"
COMMIT_LABEL = "caliban_commit"

# What the job's container is told about itself, as local containers are.
JOB_ID_ENV = "CALIBAN_JOB_ID"
XGROUP_ENV = "CALIBAN_XGROUP"

TERMINAL = frozenset(
    {
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
        "JOB_STATE_PARTIALLY_SUCCEEDED",
    }
)

_STATES: dict[str, JobState] = {
    "JOB_STATE_QUEUED": JobState.SUBMITTED,
    "JOB_STATE_PENDING": JobState.SUBMITTED,
    "JOB_STATE_PAUSED": JobState.SUBMITTED,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    # Vertex cancels asynchronously: the job may still succeed or fail.
    "JOB_STATE_CANCELLING": JobState.CANCELLING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.FAILED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.STOPPED,
}


def job_state(vertex_state: str | None) -> JobState:
    """Vertex's JobState as ours; anything new or unspecified is UNKNOWN (asked again later)."""
    return _STATES.get(vertex_state or "", JobState.UNKNOWN)


def labels_for(
    *,
    job_id: str,
    store_id: str,
    xgroup: str,
    gpu: AcceleratorSpec | None,
    tpu: AcceleratorSpec | None,
    name: str,
    user_labels: Mapping[str, str],
    args: Sequence[str],
    commit: str | None = None,
) -> dict[str, str]:
    base = {
        "gpu_enabled": str(gpu is not None).lower(),
        "tpu_enabled": str(tpu is not None).lower(),
        "job_name": name,
    }
    reserved = {JOB_ID_LABEL: job_id, STORE_LABEL: store_id, XGROUP_LABEL: xgroup}
    if commit:
        reserved[COMMIT_LABEL] = commit
    return job_labels(base=base, user=user_labels, args=args, reserved=reserved)


def job_env(*, job_id: str, xgroup: str) -> dict[str, str]:
    return {"PYTHONUNBUFFERED": "1", JOB_ID_ENV: job_id, XGROUP_ENV: xgroup}


def custom_job(
    *,
    display_name: str,
    image: str,
    args: Sequence[str],
    machine_type: str,
    accelerator: AcceleratorSpec | None,
    labels: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    service_account: str | None = None,
    spot: bool = False,
    timeout_s: int | None = None,
    replica_count: int = 1,
    tpu_topology: str | None = None,
    placement: Scheduling | None = None,
) -> dict[str, Any]:
    machine: dict[str, Any] = {"machineType": machine_type}
    if accelerator is not None and accelerator.vertex_type is not None:
        machine["acceleratorType"] = accelerator.vertex_type
        machine["acceleratorCount"] = accelerator.count
    if tpu_topology:
        # Required for TPU VMs (v4 and later); see accelerators.vertex_tpu_topology.
        machine["tpuTopology"] = tpu_topology
    if placement is not None and placement.reservation_affinity():
        machine["reservationAffinity"] = placement.reservation_affinity()
    container: dict[str, Any] = {"imageUri": image, "args": list(args)}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    job_spec: dict[str, Any] = {
        "workerPoolSpecs": [
            {
                "machineSpec": machine,
                # int64 fields are strings in proto3 JSON.
                "replicaCount": str(replica_count),
                "containerSpec": container,
            }
        ],
    }
    scheduling: dict[str, Any] = {}
    if spot:
        scheduling["strategy"] = "SPOT"
    if timeout_s:
        scheduling["timeout"] = f"{int(timeout_s)}s"
    if placement is not None:
        scheduling.update(placement.scheduling())
        if placement.persistent_resource:
            job_spec["persistentResourceId"] = placement.persistent_resource
    if scheduling:
        job_spec["scheduling"] = scheduling
    if service_account:
        job_spec["serviceAccount"] = service_account
    return {"displayName": display_name, "labels": dict(labels), "jobSpec": job_spec}


def numeric_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def console_url(project: str, region: str, name: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/"
        f"{numeric_id(name)}?project={project}"
    )


_STATE_NOTES = {
    "JOB_STATE_EXPIRED": "the job expired before it could run",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "the job only partially succeeded",
}


def error_message(job: Mapping[str, Any]) -> str | None:
    """Why a job ended as it did: its ``error`` (a proto Status), else a note for
    the terminal states that say it themselves."""
    err = job.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    return _STATE_NOTES.get(str(job.get("state") or ""))


def remote_facts(job: Mapping[str, Any]) -> dict[str, object]:
    """Vertex's own state and error code, which our JobState folds together
    (EXPIRED and a stockout are both FAILED)."""
    facts: dict[str, object] = {"vertex_state": str(job.get("state") or "")}
    err = job.get("error")
    if isinstance(err, dict) and err.get("code") is not None:
        facts["error_code"] = int(err["code"])
    return facts


def quote_filter_value(value: str) -> str:
    """A value as a quoted string literal of a Google list filter (AIP-160, and
    Cloud Logging's query language): unquoted, a value is read as a text token,
    which breaks on '-', ':' and spaces."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
