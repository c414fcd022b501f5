"""Kubernetes manifests, labels, names and state mapping (caliban.platforms.kubernetes.spec)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from caliban.core.accelerators import AcceleratorSpec
from caliban.errors import ValidationError
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes.spec import ClusterTarget, JobShape, Placement
from caliban.spec import JobState

JOB_ID = "01m8bbj04stmkjmx04qqx89saz"
IMAGE = "127.0.0.1:5000/caliban-x@sha256:" + "a" * 64


def manifest(placement: Placement | None = None, **shape: Any) -> dict[str, Any]:
    labels = k8sspec.labels_for(user={}, xgroup="g", store_id="s1", job_id=JOB_ID)
    return k8sspec.job_manifest(
        JobShape(image=IMAGE, placement=placement or Placement(), xgroup="g", **shape),
        name=k8sspec.job_name("caliban-me", JOB_ID),
        job_id=JOB_ID,
        args=["--lr", "0.1"],
        labels=labels,
    )


def pod_spec(m: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = m["spec"]["template"]["spec"]
    return spec


# -- labels and names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Vision", "Vision"),
        ("my team!", "my-team"),
        ("-lead.", "lead"),
        ("a" * 80, "a" * 63),
        ("x" * 62 + "-y", "x" * 62),
        ("", ""),
        ("user-xgroup-2024-01-01-00-00-00", "user-xgroup-2024-01-01-00-00-00"),
    ],
)
def test_label_values_are_valid(raw: str, clean: str) -> None:
    assert k8sspec.label_value(raw) == clean
    assert k8sspec.label_value(clean) == clean  # idempotent


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("team", "team"),
        ("example.com/team", "example.com/team"),
        ("Bad Prefix/team", "Bad-Prefix-team"),
        ("a/b/c", "a-b-c"),
        ("!!!", ""),
    ],
)
def test_label_keys(raw: str, clean: str) -> None:
    assert k8sspec.label_key(raw) == clean


def test_caliban_labels_win_over_user_labels() -> None:
    out = k8sspec.labels_for(
        user={"team": "Vision Lab", "caliban.dev/job": "forged", "": "x"},
        xgroup="my group",
        store_id="abc",
        job_id=JOB_ID,
    )
    assert out == {
        "team": "Vision-Lab",
        "caliban.dev/xgroup": "my-group",
        "caliban.dev/job": JOB_ID,
        "caliban.dev/store": "abc",
    }


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("Caliban_Totoro", "caliban-totoro-" + JOB_ID),
        ("_foo", "job--foo-" + JOB_ID),
        ("cifar10-test", "cifar10-test-" + JOB_ID),
    ],
)
def test_job_names_are_dns_labels_ending_in_the_job_id(prefix: str, expected: str) -> None:
    assert k8sspec.job_name(prefix, JOB_ID) == expected


def test_long_prefixes_are_cut_and_indexed_names_leave_room_for_the_index() -> None:
    name = k8sspec.job_name("p" * 100, JOB_ID)
    assert len(name) == 63 and name.endswith("-" + JOB_ID)
    reserve = k8sspec.index_reserve(1000)  # indexes up to 999: "-999"
    indexed = k8sspec.job_name("p" * 100, JOB_ID, reserve=reserve)
    assert reserve == 4 and len(indexed) + reserve <= 63


# -- manifests ----------------------------------------------------------------------------------


def test_cpu_job_on_a_generic_cluster() -> None:
    m = manifest()
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    assert m["metadata"]["name"] == "caliban-me-" + JOB_ID
    assert m["metadata"]["labels"] == m["spec"]["template"]["metadata"]["labels"]
    assert m["metadata"]["labels"]["caliban.dev/job"] == JOB_ID
    spec = m["spec"]
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] == 7 * 24 * 3600
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    pod = pod_spec(m)
    assert pod["restartPolicy"] == "Never"
    assert "nodeSelector" not in pod and "tolerations" not in pod
    (container,) = pod["containers"]
    assert container["image"] == IMAGE and container["args"] == ["--lr", "0.1"]
    assert "command" not in container  # the image's entrypoint runs the script
    assert container["resources"] == {"requests": {"cpu": "1000m", "memory": "2000M"}}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CALIBAN_JOB_ID"] == JOB_ID and env["CALIBAN_XGROUP"] == "g"


def test_gke_defaults_are_the_originals() -> None:
    cpu = manifest(Placement(cluster_type="gke"))
    gpu = manifest(Placement(cluster_type="gke", gpu=AcceleratorSpec(1, "T4")))
    assert pod_spec(cpu)["containers"][0]["resources"]["requests"] == {
        "cpu": "31000m",
        "memory": "25000M",
    }
    assert pod_spec(gpu)["containers"][0]["resources"]["requests"] == {
        "cpu": "1500m",
        "memory": "7000M",
    }


def test_gpu_job_on_gke() -> None:
    m = manifest(
        Placement(cluster_type="gke", gpu=AcceleratorSpec(2, "V100"), min_cpu=4000, min_mem=16000)
    )
    pod = pod_spec(m)
    res = pod["containers"][0]["resources"]
    assert res == {
        "requests": {"cpu": "4000m", "memory": "16000M"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-v100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_gpu_job_elsewhere_asks_for_gpus_only() -> None:
    m = manifest(
        Placement(
            gpu=AcceleratorSpec(1, "A100"),
            node_selector={"nvidia.com/gpu.product": "A100-SXM4-40GB"},
        )
    )
    pod = pod_spec(m)
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100-SXM4-40GB"}


def test_tpu_job_on_gke() -> None:
    pod = pod_spec(manifest(Placement(cluster_type="gke", tpu=AcceleratorSpec(4, "V5_LITEPOD"))))
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": "4"}
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }


@pytest.mark.parametrize(
    ("flag", "key"),
    [("spot", "cloud.google.com/gke-spot"), ("preemptible", "cloud.google.com/gke-preemptible")],
)
def test_spot_and_preemptible_select_and_tolerate_their_nodes(flag: str, key: str) -> None:
    placement = Placement(
        cluster_type="gke", spot=flag == "spot", preemptible=flag == "preemptible"
    )
    pod = pod_spec(manifest(placement))
    assert pod["nodeSelector"] == {key: "true"}
    assert pod["tolerations"] == [
        {"key": key, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]


def test_on_demand_is_the_default() -> None:
    pod = pod_spec(manifest(Placement(cluster_type="gke")))
    assert "nodeSelector" not in pod and "tolerations" not in pod


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        (
            Placement(
                gpu=AcceleratorSpec(1, "T4"),
                tpu=AcceleratorSpec(4, "V5_LITEPOD"),
                cluster_type="gke",
            ),
            "GPUs or TPUs",
        ),
        (Placement(spot=True, preemptible=True, cluster_type="gke"), "exclude each other"),
        (Placement(tpu=AcceleratorSpec(4, "V5_LITEPOD")), "TPUs need a GKE cluster"),
        (Placement(spot=True), "GKE node labels"),
        (Placement(cluster_type="gke", tpu=AcceleratorSpec(8, "V3")), "legacy Cloud TPU"),
        (Placement(cluster_type="gke", tpu=AcceleratorSpec(3, "V5_LITEPOD")), "chips"),
        (Placement(min_cpu=0), "--min_cpu"),
        (Placement(node_selector={"a b": "c"}), "not a valid label"),
        (Placement(cluster_type="eks"), "unknown cluster type"),
    ],
)
def test_impossible_placements_are_refused(placement: Placement, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        placement.check()


def test_rebind_readdresses_a_manifest_to_a_new_job() -> None:
    old = manifest()
    new_id = "01m8bbj04stmkjmx04qqx89sb9"
    new = k8sspec.rebind(old, prefix=k8sspec.name_prefix(old), job_id=new_id)
    assert new["metadata"]["name"] == "caliban-me-" + new_id
    assert new["metadata"]["labels"]["caliban.dev/job"] == new_id
    assert new["spec"]["template"]["metadata"]["labels"]["caliban.dev/job"] == new_id
    env = {e["name"]: e["value"] for e in pod_spec(new)["containers"][0]["env"]}
    assert env["CALIBAN_JOB_ID"] == new_id
    assert old["metadata"]["labels"]["caliban.dev/job"] == JOB_ID  # a copy


# -- indexed sweeps ------------------------------------------------------------------------------


def test_indexed_job_and_configmap() -> None:
    template = manifest(
        Placement(cluster_type="gke", gpu=AcceleratorSpec(1, "T4")), backoff_limit=2
    )
    job = k8sspec.indexed_manifest(
        template,
        name="sweep-" + JOB_ID,
        first_job_id=JOB_ID,
        completions=5,
        parallelism=2,
        entry_command=["python3", "job.py"],
    )
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (5, 2)
    assert spec["backoffLimitPerIndex"] == 2 and "backoffLimit" not in spec
    assert job["metadata"]["labels"]["caliban.dev/indexed"] == "true"
    container = pod_spec(job)["containers"][0]
    assert container["command"] == ["python3", "-c", k8sspec.LAUNCHER]
    assert container["args"] == ["python3", "job.py"]
    assert "CALIBAN_JOB_ID" not in {e["name"] for e in container["env"]}
    assert container["volumeMounts"][0]["mountPath"] == "/etc/caliban"
    assert pod_spec(job)["volumes"] == [
        {"name": "caliban-args", "configMap": {"name": "sweep-" + JOB_ID}}
    ]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    cm = k8sspec.configmap(
        "sweep-" + JOB_ID,
        [k8sspec.IndexEntry("a", ("--x", "1")), k8sspec.IndexEntry("b", ("--x", "2"))],
        job["metadata"]["labels"],
        owner={"name": "sweep", "uid": "u1"},
    )
    assert json.loads(cm["data"]["args.json"]) == [
        {"job": "a", "args": ["--x", "1"]},
        {"job": "b", "args": ["--x", "2"]},
    ]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert (
        k8sspec.indexed_manifest(
            template,
            name="n",
            first_job_id=JOB_ID,
            completions=3,
            parallelism=None,
            entry_command=["x"],
        )["spec"]["parallelism"]
        == 3
    )


def test_too_many_arguments_for_one_configmap() -> None:
    entries = [k8sspec.IndexEntry(f"{i:026d}", ("--blob", "x" * 1000)) for i in range(1000)]
    with pytest.raises(ValidationError, match="do not fit"):
        k8sspec.configmap("n", entries, {})


def run_launcher(tmp_path: Path, entries: list[dict[str, Any]], index: int) -> str:
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(entries))
    probe = "import json,os,sys;print(json.dumps([sys.argv[1:],os.environ['CALIBAN_JOB_ID']]))"
    env = {**os.environ, "CALIBAN_ARGS_FILE": str(args_file), "JOB_COMPLETION_INDEX": str(index)}
    out = subprocess.run(
        [sys.executable, "-c", k8sspec.LAUNCHER, sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def test_the_launcher_execs_the_entry_command_with_its_index_arguments(tmp_path: Path) -> None:
    entries = [{"job": f"job{i}", "args": ["--i", str(i), "--name", f"n {i}"]} for i in range(4)]
    for i in range(4):
        argv, job_id = json.loads(run_launcher(tmp_path, entries, i))
        assert argv == ["--i", str(i), "--name", f"n {i}"] and job_id == f"job{i}"


def test_the_launcher_skips_stopped_indexes(tmp_path: Path) -> None:
    out = run_launcher(tmp_path, [{"job": "a", "args": [], "skip": True}], 0)
    assert out == "caliban: this experiment was stopped"


# -- states --------------------------------------------------------------------------------------


def cond(kind: str, status: str = "True", **extra: str) -> dict[str, str]:
    return {"type": kind, "status": status, **extra}


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, JobState.SUBMITTED),
        ({"active": 1, "ready": 0}, JobState.SUBMITTED),  # pending pods
        ({"active": 1, "ready": 1}, JobState.RUNNING),
        ({"active": 1}, JobState.RUNNING),  # clusters that do not report ready
        ({"conditions": [cond("SuccessCriteriaMet")], "active": 1}, JobState.RUNNING),
        ({"conditions": [cond("FailureTarget")]}, JobState.RUNNING),
        (
            {"conditions": [cond("SuccessCriteriaMet"), cond("Complete")], "succeeded": 1},
            JobState.SUCCEEDED,
        ),
        (
            {
                "conditions": [
                    cond("FailureTarget"),
                    cond("Failed", reason="BackoffLimitExceeded"),
                ],
                "failed": 1,
            },
            JobState.FAILED,
        ),
        (
            {"conditions": [cond("Failed", status="False")], "active": 1, "ready": 1},
            JobState.RUNNING,
        ),
        # The original's blind spot: completion time never set on failure.
        ({"failed": 5, "conditions": [cond("Failed", reason="DeadlineExceeded")]}, JobState.FAILED),
    ],
)
def test_job_state(status: dict[str, Any], state: JobState) -> None:
    assert k8sspec.job_state({"status": status})[0] is state


def test_failed_message_names_the_reason() -> None:
    job = {
        "status": {
            "conditions": [
                cond(
                    "Failed",
                    reason="BackoffLimitExceeded",
                    message="Job has reached the specified backoff limit",
                )
            ]
        }
    }
    assert k8sspec.job_state(job) == (
        JobState.FAILED,
        "BackoffLimitExceeded: Job has reached the specified backoff limit",
    )


@pytest.mark.parametrize(
    ("text", "indexes"),
    [
        ("", set()),
        (None, set()),
        ("0", {0}),
        ("0-3,5", {0, 1, 2, 3, 5}),
        ("1,3-4,10-11", {1, 3, 4, 10, 11}),
    ],
)
def test_parse_indexes(text: str | None, indexes: set[int]) -> None:
    assert k8sspec.parse_indexes(text) == indexes


@pytest.mark.parametrize("text", ["a", "1-", "-2", "1-b"])
def test_parse_indexes_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="interval"):
        k8sspec.parse_indexes(text)


def test_index_states() -> None:
    job = {"status": {"completedIndexes": "0-1", "failedIndexes": "3", "active": 2, "ready": 1}}
    states = k8sspec.index_states(job, range(6), running=[2])
    assert {i: s for i, (s, _) in states.items()} == {
        0: JobState.SUCCEEDED,
        1: JobState.SUCCEEDED,
        2: JobState.RUNNING,
        3: JobState.FAILED,
        4: JobState.SUBMITTED,
        5: JobState.SUBMITTED,
    }
    failed = {
        "status": {
            "completedIndexes": "0",
            "conditions": [cond("Failed", reason="DeadlineExceeded")],
        }
    }
    assert k8sspec.index_states(failed, [0, 1])[1] == (JobState.FAILED, "DeadlineExceeded")


def test_cluster_targets_round_trip_through_details() -> None:
    target = ClusterTarget(
        kind="gke", project="p", location="us-central1-a", cluster="c", namespace="ml"
    )
    assert ClusterTarget.from_details(target.to_details()) == target
    other = ClusterTarget(kind="kubeconfig", kubeconfig="/k", context="x")
    assert other.key != target.key
    with pytest.raises(ValidationError, match="no usable cluster"):
        ClusterTarget.from_details({})
