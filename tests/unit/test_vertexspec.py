"""Vertex AI CustomJob bodies and state mapping (pure)."""

from __future__ import annotations

import pytest

from caliban.core.accelerators import AcceleratorSpec
from caliban.platforms.vertex import spec as vertexspec
from caliban.spec import JobState


def _body(**kw: object) -> dict[str, object]:
    base: dict[str, object] = dict(
        display_name="exp_1",
        image="us-central1-docker.pkg.dev/p/r/i@sha256:" + "0" * 64,
        args=["--lr", "0.1"],
        machine_type="n1-highcpu-32",
        accelerator=None,
        labels={"caliban_job": "j1"},
    )
    base.update(kw)
    return vertexspec.custom_job(**base)  # type: ignore[arg-type]


def test_a_cpu_job_is_the_minimal_body() -> None:
    assert _body() == {
        "displayName": "exp_1",
        "labels": {"caliban_job": "j1"},
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "machineSpec": {"machineType": "n1-highcpu-32"},
                    "replicaCount": "1",
                    "containerSpec": {
                        "imageUri": "us-central1-docker.pkg.dev/p/r/i@sha256:" + "0" * 64,
                        "args": ["--lr", "0.1"],
                    },
                }
            ]
        },
    }


def test_gpus_tpus_replicas_and_env() -> None:
    gpu = _body(
        machine_type="a2-highgpu-2g",
        accelerator=AcceleratorSpec(2, "A100"),
        env={"A": "1", "B": "two"},
        replica_count=3,
    )
    pool = gpu["jobSpec"]["workerPoolSpecs"][0]  # type: ignore[index]
    assert pool["machineSpec"] == {
        "machineType": "a2-highgpu-2g",
        "acceleratorType": "NVIDIA_TESLA_A100",
        "acceleratorCount": 2,
    }
    assert pool["replicaCount"] == "3"  # int64 as a string, as proto3 JSON has it
    assert pool["containerSpec"]["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "two"},
    ]
    assert "command" not in pool["containerSpec"]  # the image's entrypoint runs the script
    tpu = _body(machine_type="cloud-tpu", accelerator=AcceleratorSpec(8, "V2"))
    machine = tpu["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]  # type: ignore[index]
    assert machine == {
        "machineType": "cloud-tpu",
        "acceleratorType": "TPU_V2",
        "acceleratorCount": 8,
    }


def test_spot_timeout_and_service_account() -> None:
    body = _body(spot=True, timeout_s=7200, service_account="sa@p.iam.gserviceaccount.com")
    spec = body["jobSpec"]
    assert spec["scheduling"] == {"strategy": "SPOT", "timeout": "7200s"}  # type: ignore[index]
    assert spec["serviceAccount"] == "sa@p.iam.gserviceaccount.com"  # type: ignore[index]
    assert _body(timeout_s=60)["jobSpec"]["scheduling"] == {"timeout": "60s"}  # type: ignore[index]
    plain = _body()["jobSpec"]
    assert "scheduling" not in plain and "serviceAccount" not in plain  # type: ignore[operator]


def test_job_env_mirrors_local_containers() -> None:
    assert vertexspec.job_env(job_id="01abc", xgroup="g") == {
        "PYTHONUNBUFFERED": "1",
        "CALIBAN_JOB_ID": "01abc",
        "CALIBAN_XGROUP": "g",
    }


def test_caliban_labels_win_over_user_and_argument_labels() -> None:
    labels = vertexspec.labels_for(
        job_id="01job",
        store_id="st0re",
        xgroup="Team.Sweep",
        gpu=AcceleratorSpec(1, "T4"),
        tpu=None,
        name="resnet",
        user_labels={"caliban_job": "mine", "Team": "Vision", "job_name": "x"},
        args=["--caliban_store", "nope", "--lr", "0.01", "--flag"],
    )
    assert labels["caliban_job"] == "01job"
    assert labels["caliban_store"] == "st0re"
    assert labels["caliban_xgroup"] == "team_sweep"
    assert labels["gpu_enabled"] == "true" and labels["tpu_enabled"] == "false"
    assert labels["job_name"] == "x"  # a -l label overrides caliban's descriptive ones
    assert labels["team"] == "vision" and labels["lr"] == "0_01" and labels["flag"] == ""


# Every value of google.cloud.aiplatform.v1.JobState.
ALL_STATES = {
    "JOB_STATE_UNSPECIFIED": JobState.UNKNOWN,
    "JOB_STATE_QUEUED": JobState.SUBMITTED,
    "JOB_STATE_PENDING": JobState.SUBMITTED,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_CANCELLING": JobState.CANCELLING,
    "JOB_STATE_CANCELLED": JobState.STOPPED,
    "JOB_STATE_PAUSED": JobState.SUBMITTED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.FAILED,
}


@pytest.mark.parametrize(("vertex", "ours"), ALL_STATES.items())
def test_every_vertex_state_maps(vertex: str, ours: JobState) -> None:
    assert vertexspec.job_state(vertex) is ours
    # Vertex's terminal states are exactly the ones that end a caliban job.
    assert (vertex in vertexspec.TERMINAL) == ours.terminal


def test_unknown_and_missing_states_are_asked_again_later() -> None:
    assert len(ALL_STATES) == 12
    assert vertexspec.job_state(None) is JobState.UNKNOWN
    assert vertexspec.job_state("JOB_STATE_FROM_THE_FUTURE") is JobState.UNKNOWN


def test_error_messages() -> None:
    failed = {"state": "JOB_STATE_FAILED", "error": {"code": 8, "message": "GPU quota"}}
    assert vertexspec.error_message(failed) == "GPU quota"
    assert vertexspec.error_message({"state": "JOB_STATE_EXPIRED"}) == (
        "the job expired before it could run"
    )
    assert "partially" in str(vertexspec.error_message({"state": "JOB_STATE_PARTIALLY_SUCCEEDED"}))
    assert vertexspec.error_message({"state": "JOB_STATE_SUCCEEDED"}) is None


def test_console_url() -> None:
    name = "projects/123/locations/europe-west4/customJobs/987654321"
    assert vertexspec.numeric_id(name) == "987654321"
    assert vertexspec.console_url("my-proj", "europe-west4", name) == (
        "https://console.cloud.google.com/vertex-ai/locations/europe-west4/training/987654321"
        "?project=my-proj"
    )


def test_tpu_vms_carry_their_topology_and_enumless_tpus_only_their_machine() -> None:
    v5e = _body(
        machine_type="ct5lp-hightpu-4t",
        accelerator=AcceleratorSpec(4, "V5_LITEPOD"),
        tpu_topology="2x2",
    )
    assert v5e["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == {  # type: ignore[index]
        "machineType": "ct5lp-hightpu-4t",
        "acceleratorType": "TPU_V5_LITEPOD",
        "acceleratorCount": 4,
        "tpuTopology": "2x2",
    }
    # aiplatform v1 has no acceleratorType for v6e: the machine type and topology say it all.
    v6e = _body(
        machine_type="ct6e-standard-8t", accelerator=AcceleratorSpec(8, "V6E"), tpu_topology="2x4"
    )
    assert v6e["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == {  # type: ignore[index]
        "machineType": "ct6e-standard-8t",
        "tpuTopology": "2x4",
    }
