"""Kueue and GKE ComputeClass in Job manifests, and how a held Job reads (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from caliban.core.accelerators import AcceleratorSpec
from caliban.errors import ValidationError
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes.spec import JobShape, Placement
from caliban.platforms.kubernetes.versions import NEWEST, OLDEST, OLDEST_INDEXED
from caliban.spec import JobState
from tests.fakes.k8s_schema import validate

JOB_ID = "01hzzzzzzzzzzzzzzzzzzzzzzz"
LABELS = {"caliban.dev/job": JOB_ID, "caliban.dev/xgroup": "g"}
IMAGE = "registry.example/app@sha256:" + "a" * 64


def manifest(shape: JobShape) -> dict[str, Any]:
    shape.check()
    return k8sspec.job_manifest(
        shape, name=k8sspec.job_name("s", JOB_ID), job_id=JOB_ID, args=["--x"], labels=LABELS
    )


def indexed(job: dict[str, Any]) -> dict[str, Any]:
    return k8sspec.indexed_manifest(
        job,
        name=k8sspec.job_name("s", JOB_ID, reserve=2),
        first_job_id=JOB_ID,
        completions=3,
        parallelism=2,
        entry_command=["python", "train.py"],
    )


def test_a_queued_job_is_labelled_for_kueue_and_created_suspended() -> None:
    job = manifest(JobShape(image=IMAGE, queue="team-a", priority_class="high"))
    assert job["spec"]["suspend"] is True
    labels = job["metadata"]["labels"]
    assert labels[k8sspec.KUEUE_QUEUE_LABEL] == "team-a"
    assert labels[k8sspec.KUEUE_PRIORITY_LABEL] == "high"
    # On the Job only: Kueue's pod integration must not take the pods as Workloads.
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not any(k.startswith(k8sspec.KUEUE_PREFIX) for k in pod_labels)
    assert pod_labels[k8sspec.JOB_LABEL] == JOB_ID


def test_without_a_queue_nothing_changes() -> None:
    job = manifest(JobShape(image=IMAGE))
    assert "suspend" not in job["spec"]
    assert not any(k.startswith(k8sspec.KUEUE_PREFIX) for k in job["metadata"]["labels"])


def test_an_indexed_sweep_is_one_suspended_job_with_the_queue_label() -> None:
    job = indexed(manifest(JobShape(image=IMAGE, queue="team-a")))
    assert job["spec"]["suspend"] is True and job["spec"]["completions"] == 3
    assert job["metadata"]["labels"][k8sspec.KUEUE_QUEUE_LABEL] == "team-a"
    assert k8sspec.KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("minor", [OLDEST, OLDEST_INDEXED, NEWEST])
def test_queued_and_compute_class_manifests_pass_the_strict_schemas(minor: int) -> None:
    placement = Placement(
        cluster_type="gke", gpu=AcceleratorSpec(1, "L4"), compute_class="h100-or-l4"
    )
    job = manifest(JobShape(image=IMAGE, placement=placement, queue="q", priority_class="p"))
    validate(job, minor)
    if minor >= OLDEST_INDEXED:
        validate(indexed(job), minor)


def test_compute_class_selects_the_class_and_leaves_the_gpu_type_to_it() -> None:
    placement = Placement(cluster_type="gke", gpu=AcceleratorSpec(2, "A100"), compute_class="gpus")
    placement.check()
    job = manifest(JobShape(image=IMAGE, placement=placement))
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {k8sspec.GKE_COMPUTE_CLASS: "gpus"}
    assert pod["containers"][0]["resources"]["limits"] == {k8sspec.GPU_RESOURCE: "2"}


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        (Placement(cluster_type="generic", compute_class="c"), "GKE ComputeClass"),
        (Placement(cluster_type="gke", compute_class="c", spot=True), "exclude each other"),
        (Placement(cluster_type="gke", compute_class="Bad_Name"), "not a Kubernetes object"),
        (
            Placement(
                cluster_type="gke",
                compute_class="c",
                node_selector={k8sspec.GKE_COMPUTE_CLASS: "d"},
            ),
            "exclude each other",
        ),
    ],
)
def test_compute_class_refusals(placement: Placement, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        placement.check()


@pytest.mark.parametrize(
    ("queue", "priority", "message"),
    [
        ("Team_A", None, "--queue 'Team_A' is not a Kubernetes object name"),
        ("a" * 64, None, "is not a Kubernetes object name"),
        ("-a", None, "is not a Kubernetes object name"),
        ("q", "High!", "--priority_class 'High!'"),
        (None, "high", "needs --queue"),
    ],
)
def test_queue_and_priority_names_are_checked(
    queue: str | None, priority: str | None, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        JobShape(image=IMAGE, queue=queue, priority_class=priority).check()


def held_job(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {k8sspec.KUEUE_QUEUE_LABEL: "team-a"}},
        "spec": {"suspend": True, "completions": 3},
        "status": status,
    }


def cond(kind: str, status: str = "True", **kw: str) -> dict[str, str]:
    return {"type": kind, "status": status, **kw}


def test_a_held_job_reads_as_queued_naming_its_queue() -> None:
    state, message = k8sspec.job_state(
        held_job(conditions=[cond("Suspended", reason="JobSuspended", message="Job suspended")])
    )
    assert state is JobState.QUEUED
    assert message == "waiting for Kueue to admit it from queue team-a"


def test_an_evicted_job_says_why() -> None:
    job = held_job(conditions=[cond("Suspended", reason="Preempted", message="by high")])
    assert k8sspec.job_state(job) == (
        JobState.QUEUED,
        "waiting for Kueue to admit it from queue team-a (Preempted: by high)",
    )


def test_admitted_pending_and_running_pods_are_not_queued() -> None:
    admitted = held_job(active=1, ready=0, conditions=[cond("Suspended", "False")])
    admitted["spec"]["suspend"] = False
    assert k8sspec.job_state(admitted)[0] is JobState.SUBMITTED
    admitted["status"]["ready"] = 1
    assert k8sspec.job_state(admitted)[0] is JobState.RUNNING


def test_a_finished_or_deleted_job_is_not_queued_even_if_suspended() -> None:
    assert k8sspec.job_state(held_job(conditions=[cond("Complete")]))[0] is JobState.SUCCEEDED
    assert k8sspec.job_state(held_job(conditions=[cond("Failed")]))[0] is JobState.FAILED
    deleting = held_job()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert k8sspec.job_state(deleting) == (JobState.RUNNING, "being deleted")


def test_a_suspended_job_without_a_queue_is_queued_as_suspended() -> None:
    assert k8sspec.job_state({"spec": {"suspend": True}}) == (JobState.QUEUED, "suspended")


def test_every_index_of_a_held_indexed_job_is_queued() -> None:
    states = k8sspec.index_states(held_job(), range(3))
    assert {s for s, _ in states.values()} == {JobState.QUEUED}


def test_queued_is_an_active_not_a_terminal_state() -> None:
    assert JobState.QUEUED.active and not JobState.QUEUED.terminal


def test_the_placement_repr_of_a_submission_without_a_compute_class_is_unchanged() -> None:
    # The repr is part of the spec key that lets a re-run resume recorded jobs.
    assert "compute_class" not in repr(Placement())
