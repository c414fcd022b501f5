"""Every Job manifest caliban can make is valid for the oldest and newest Kubernetes it
supports, by the strict OpenAPI schemas kubernetes-validate ships (what ``kubectl
--validate=strict`` and CI linters check, stricter than the server's own defaulting)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from caliban.core.accelerators import AcceleratorSpec, catalog
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes.spec import IndexEntry, JobShape, Placement
from caliban.platforms.kubernetes.versions import (
    NEWEST,
    OLDEST,
    OLDEST_INDEXED,
    ServerVersion,
    check_server,
)
from tests.fakes.k8s_schema import schema_causes, validate

JOB_ID = "01hzzzzzzzzzzzzzzzzzzzzzzz"
LABELS = {"team": "vision", "caliban.dev/job": JOB_ID, "caliban.dev/xgroup": "g"}


def accelerators() -> Iterator[tuple[str, AcceleratorSpec | None, AcceleratorSpec | None]]:
    yield "cpu", None, None
    for name in catalog().gpus:
        yield f"gpu-{name}", AcceleratorSpec(2, name), None
    for name, tpu in catalog().tpus.items():
        if tpu.gke_accelerator is None:
            continue  # legacy Cloud TPU nodes: refused before any manifest exists
        for count in tpu.topologies:
            yield f"tpu-{count}x{name}", None, AcceleratorSpec(count, name)


def placements() -> Iterator[tuple[str, Placement]]:
    for (label, gpu, tpu), cluster, market in itertools.product(
        accelerators(), ("gke", "generic"), ("on-demand", "spot", "preemptible")
    ):
        if cluster == "generic" and (tpu is not None or market != "on-demand"):
            continue  # GKE-only: Placement.check refuses these
        placement = Placement(
            cluster_type=cluster,
            gpu=gpu,
            tpu=tpu,
            spot=market == "spot",
            preemptible=market == "preemptible",
            node_selector={"pool": "ml"} if cluster == "generic" else {},
        )
        placement.check()
        yield f"{label}-{cluster}-{market}", placement


PLACEMENTS = dict(placements())


def objects(placement: Placement, indexed: bool) -> list[dict[str, Any]]:
    shape = JobShape(image="registry.example/app@sha256:" + "a" * 64, placement=placement)
    job = k8sspec.job_manifest(
        shape,
        name=k8sspec.job_name("sweep", JOB_ID),
        job_id=JOB_ID,
        args=["--lr", "0.1"],
        labels=LABELS,
    )
    if not indexed:
        return [job]
    name = k8sspec.job_name("sweep", JOB_ID, reserve=k8sspec.index_reserve(3))
    indexed_job = k8sspec.indexed_manifest(
        job,
        name=name,
        first_job_id=JOB_ID,
        completions=3,
        parallelism=2,
        entry_command=["python", "train.py"],
    )
    entries = [IndexEntry(f"{JOB_ID[:-1]}{i}", ("--lr", str(i))) for i in range(3)]
    owned = k8sspec.configmap(name, entries, LABELS, owner={"name": name, "uid": "u-1"})
    return [k8sspec.configmap(name, entries, LABELS), owned, indexed_job]


def test_the_catalogue_is_covered() -> None:
    names = set(PLACEMENTS)
    assert {"gpu-T4-gke-spot", "gpu-A100-generic-on-demand", "cpu-gke-preemptible"} <= names
    assert any(n.startswith("tpu-") and n.endswith("-gke-spot") for n in names)


@pytest.mark.parametrize("indexed", [False, True], ids=["per-experiment", "indexed"])
@pytest.mark.parametrize("placement", list(PLACEMENTS.values()), ids=list(PLACEMENTS))
def test_every_manifest_is_valid_for_the_oldest_and_newest_supported_version(
    placement: Placement, indexed: bool
) -> None:
    oldest = OLDEST_INDEXED if indexed else OLDEST
    made = objects(placement, indexed)
    for minor in (oldest, NEWEST):
        for obj in made:
            validate(obj, minor)
        # ...and the version check lets them through at exactly those versions.
        assert check_server(ServerVersion(1, minor), made, where="c") is None


def test_an_indexed_job_is_not_valid_before_its_minimum_version() -> None:
    (_, _, job) = objects(Placement(), indexed=True)
    causes = schema_causes(job, OLDEST_INDEXED - 2)
    assert [(c.field, c.reason) for c in causes] == [
        ("spec.backoffLimitPerIndex", "FieldValueNotFound")
    ]


def test_the_validator_rejects_a_bad_manifest_with_field_paths() -> None:
    (job,) = objects(Placement(), indexed=False)
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    del rule["onPodConditions"][0]["status"]  # what every export lacked before
    job["spec"]["template"]["spec"]["containers"][0]["image"] = 7
    job["spec"]["retries"] = 3
    got = {(c.field, c.reason) for c in schema_causes(job, OLDEST)}
    assert got == {
        ("spec.podFailurePolicy.rules[0].onPodConditions[0].status", "FieldValueRequired"),
        ("spec.template.spec.containers[0].image", "FieldValueTypeInvalid"),
        ("spec.retries", "FieldValueNotFound"),
    }
    with pytest.raises(AssertionError, match=r"onPodConditions\[0\]\.status: Required value"):
        validate(job, OLDEST)
    # 1.35 made the status optional: the schemas differ, which is why both ends are checked.
    assert (
        "spec.podFailurePolicy.rules[0].onPodConditions[0].status",
        "FieldValueRequired",
    ) not in {(c.field, c.reason) for c in schema_causes(job, NEWEST)}
