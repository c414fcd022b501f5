"""The fakes' request validation against Google's discovery documents, and every request body
caliban builds from its catalogue passing it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from caliban.core.accelerators import catalog
from caliban.core.config import CalibanConfig
from caliban.options import CloudRequest, ProjectOptions
from caliban.platforms.kubernetes import gkespec
from caliban.platforms.vertex import plan as cloud_run
from caliban.spec import JobMode

from . import discovery

CUSTOM_JOB = discovery.aiplatform().request_schema("projects.locations.customJobs.create")
CREATE_CLUSTER = discovery.container().request_schema("projects.locations.clusters.create")
CREATE_POOL = discovery.container().request_schema("projects.locations.clusters.nodePools.create")


def test_the_documents_are_the_recorded_revisions() -> None:
    """A new google-api-python-client pin brings new documents: look at what changed, then
    update REVISIONS and the supported revision in docs/cloud.md."""
    for name, revision in discovery.REVISIONS.items():
        assert discovery.document(name).revision == revision, name
    assert CUSTOM_JOB == "GoogleCloudAiplatformV1CustomJob"
    assert (CREATE_CLUSTER, CREATE_POOL) == ("CreateClusterRequest", "CreateNodePoolRequest")
    docs = (Path(__file__).parents[2] / "docs" / "cloud.md").read_text()
    assert all(f"revision {r}" in docs for r in discovery.REVISIONS.values())


def _cases() -> list[tuple[str, str | None, str | None]]:
    """(machine type, --gpu_spec, --tpu_spec) for every machine and accelerator count."""
    cat = catalog()
    out: list[tuple[str, str | None, str | None]] = []
    for machine in cat.machines.values():
        if not machine.accelerator_required:
            out.append((machine.name, None, None))
        for name, counts in machine.accelerators.items():
            for count in counts:
                spec = f"{count}x{name}"
                out.append(
                    (machine.name, None, spec) if name in cat.tpus else (machine.name, spec, None)
                )
    return out


CASES = _cases()


def test_the_cases_cover_the_whole_catalogue() -> None:
    cat = catalog()
    named = {s.split("x", 1)[1] for _, g, t in CASES for s in (g, t) if s}
    assert named == set(cat.gpus) | set(cat.tpus)
    assert {m for m, _, _ in CASES} == set(cat.machines)


def _body(machine: str, gpu: str | None, tpu: str | None, spot: bool) -> dict[str, Any]:
    req = CloudRequest(
        project=ProjectOptions(folder=Path("/project")),
        project_id="my-project",
        machine_type=machine,
        gpu_spec=gpu,
        tpu_spec=tpu,
        spot=spot,
        timeout_s=3600,
        service_account="trainer@proj.iam.gserviceaccount.com",
        labels=(("team", "ml"),),
        # K80s are refused as end-of-life and regions differ per accelerator: the body is
        # what matters here, so the catalogue checks are skipped (the topology is not).
        force=True,
    )
    mode = JobMode.GPU if gpu else JobMode.CPU
    plan = cloud_run.check(req, mode=mode, config=CalibanConfig(), user="ada", environ={})
    return cloud_run._body(
        plan,
        req,
        index=0,
        job_id="01jexample",
        store_id="0a1b2c3d4e5f",
        xgroup="ada-xgroup-2026",
        image="us-central1-docker.pkg.dev/proj/caliban/img@sha256:" + "0" * 64,
        argv=["--lr", "0.01"],
    )


@pytest.mark.parametrize("spot", [False, True], ids=["standard", "spot"])
@pytest.mark.parametrize(("machine", "gpu", "tpu"), CASES)
def test_every_catalogue_body_passes_the_discovery_document(
    machine: str, gpu: str | None, tpu: str | None, spot: bool
) -> None:
    body = _body(machine, gpu, tpu, spot)
    assert discovery.aiplatform().check(CUSTOM_JOB, body, "custom_job") == []
    spec = body["jobSpec"]
    assert spec["workerPoolSpecs"][0]["machineSpec"]["machineType"] == machine
    assert ("scheduling" in spec and spec["scheduling"].get("strategy") == "SPOT") is spot


def test_gke_cluster_bodies_pass_the_discovery_document() -> None:
    limits = gkespec.resource_limits(
        [{"metric": "CPUS", "limit": 24.0}, {"metric": "NVIDIA_T4_GPUS", "limit": 4.0}]
    )
    for node_locations in (None, ["us-central1-a", "us-central1-b"]):
        body = gkespec.create_body(
            project="my-project",
            name="blueshift",
            location=gkespec.Location("us-central1"),
            release_channel="REGULAR",
            node_locations=node_locations,
            limits=limits,
        )
        assert discovery.container().check(CREATE_CLUSTER, body) == []


BASE = {
    "displayName": "x",
    "jobSpec": {
        "workerPoolSpecs": [
            {
                "machineSpec": {"machineType": "n1-standard-8"},
                "replicaCount": "1",
                "containerSpec": {"imageUri": "img"},
            }
        ]
    },
}


def _check(**changes: Any) -> list[discovery.Violation]:
    body = copy.deepcopy(BASE)
    pool = body["jobSpec"]["workerPoolSpecs"][0]  # type: ignore[index]
    for key, value in changes.items():
        where, _, field = key.rpartition("__")
        target = {"": body, "pool": pool, "machine": pool["machineSpec"], "spec": body["jobSpec"]}[
            where
        ]
        if value is ...:
            del target[field]
        else:
            target[field] = value
    return discovery.aiplatform().check(CUSTOM_JOB, body, "custom_job")


def test_a_valid_body_has_no_violations_in_either_field_spelling() -> None:
    assert _check() == []
    assert _check(pool__replicaCount=1) == []  # int64 as a number is fine too
    assert _check(pool__replica_count="1", pool__replicaCount=...) == []  # proto names too
    assert _check(machine__acceleratorCount="2", machine__acceleratorType="NVIDIA_TESLA_T4") == []


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"bogus": 1}, "custom_job", 'Unknown name "bogus"'),
        ({"machine__gpus": 2}, "custom_job.job_spec.worker_pool_specs[0].machine_spec", "Unknown"),
        ({"state": "JOB_STATE_RUNNING"}, "custom_job.state", "Output only"),
        ({"name": "projects/1/locations/l/customJobs/2"}, "custom_job.name", "Output only"),
        (
            {"machine__acceleratorType": "NVIDIA_GTX_1080"},
            "custom_job.job_spec.worker_pool_specs[0].machine_spec.accelerator_type",
            "MachineSpec.AcceleratorType",
        ),
        (
            {"spec__scheduling": {"strategy": "CHEAP"}},
            "custom_job.job_spec.scheduling.strategy",
            '"CHEAP"',
        ),
        (
            {"spec__scheduling": {"timeout": "1h"}},
            "custom_job.job_spec.scheduling.timeout",
            "Duration",
        ),
        (
            {"pool__replicaCount": "one"},
            "custom_job.job_spec.worker_pool_specs[0].replica_count",
            "TYPE_INT64",
        ),
        (
            {"machine__acceleratorCount": 1.5},
            "custom_job.job_spec.worker_pool_specs[0].machine_spec.accelerator_count",
            "TYPE_INT32",
        ),
        (
            {"machine__machineType": 8},
            "custom_job.job_spec.worker_pool_specs[0].machine_spec.machine_type",
            "TYPE_STRING",
        ),
        ({"labels": {"k": 5}}, "custom_job.labels[k]", "TYPE_STRING"),
        ({"spec__enableWebAccess": "yes"}, "custom_job.job_spec.enable_web_access", "TYPE_BOOL"),
        ({"displayName": ...}, "custom_job.display_name", "Required field is not set."),
        ({"jobSpec": None}, "custom_job.job_spec", "Required field is not set."),
        (
            {"pool__containerSpec": {"args": []}},
            "custom_job.job_spec.worker_pool_specs[0].container_spec.image_uri",
            "Required",
        ),
    ],
)
def test_the_validator_refuses(changes: dict[str, Any], field: str, words: str) -> None:
    (found,) = _check(**changes)
    assert found.field == field and words in found.description, found


def test_every_problem_is_reported_in_one_bad_request() -> None:
    found = _check(bogus=1, state="JOB_STATE_RUNNING", spec__scheduling={"strategy": "CHEAP"})
    assert len(found) == 3
    message, detail = discovery.bad_request(found)
    assert message.startswith("List of found errors:") and "3.Field:" in message
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in detail["fieldViolations"]] == [f.field for f in found]


def test_gke_bodies_are_checked_too() -> None:
    doc = discovery.container()
    assert doc.check(CREATE_POOL, {"parent": "p"}) == [
        discovery.Violation("node_pool", "Required field is not set.")
    ]
    (bad,) = doc.check(
        CREATE_CLUSTER, {"cluster": {"name": "c", "releaseChannel": {"channel": "SOMETIMES"}}}
    )
    assert bad.field == "cluster.release_channel.channel" and "SOMETIMES" in bad.description
    (out,) = doc.check(CREATE_CLUSTER, {"cluster": {"name": "c", "status": "RUNNING"}})
    assert out.field == "cluster.status" and "Output only" in out.description
