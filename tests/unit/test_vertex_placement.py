"""Vertex placement flags: refused combinations, and the bodies the accepted ones make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from caliban.core.accelerators import AcceleratorSpec
from caliban.core.config import CalibanConfig
from caliban.errors import ValidationError
from caliban.options import CloudRequest, ProjectOptions
from caliban.platforms.vertex import plan as vertexplan
from caliban.platforms.vertex import scheduling
from caliban.spec import JobMode
from tests.fakes import discovery
from tests.fakes.vertex_schema import CUSTOM_JOB, parse, validate

SCHEMA = discovery.aiplatform().request_schema("projects.locations.customJobs.create")
H100 = AcceleratorSpec(8, "H100")


def _plan(**kw: Any) -> tuple[vertexplan.CloudPlan, CloudRequest]:
    base: dict[str, Any] = dict(
        project=ProjectOptions(folder=Path("/project")),
        project_id="my-project",
        gpu_spec="8xH100",
        machine_type="a3-highgpu-8g",
        regions=("us-central1",),
    )
    mode = kw.pop("mode", JobMode.GPU)
    base.update(kw)
    req = CloudRequest(**base)
    return (
        vertexplan.check(req, mode=mode, config=CalibanConfig(), user="ada", environ={}),
        req,
    )


def _body(**kw: Any) -> dict[str, Any]:
    plan, req = _plan(**kw)
    return vertexplan._body(
        plan,
        req,
        index=0,
        job_id="01jexample",
        store_id="0a1b2c3d4e5f",
        xgroup="ada-xgroup",
        image="us-central1-docker.pkg.dev/my-project/caliban/img@sha256:" + "0" * 64,
        argv=["--lr", "0.01"],
    )


def _passes(body: dict[str, Any]) -> None:
    # Both checks the Vertex stand-in makes on a create: the discovery document's
    # shape and the service-side rules.
    assert discovery.aiplatform().check(SCHEMA, body, "custom_job") == []
    assert validate(parse(CUSTOM_JOB, body, "custom_job")) == []


@pytest.mark.parametrize(
    ("flags", "scheduling_fields", "machine_extra", "spec_extra"),
    [
        ({"flex_start": True}, {"strategy": "FLEX_START"}, {}, {}),
        (
            {"flex_start": True, "max_wait": "2h"},
            {"strategy": "FLEX_START", "maxWaitDuration": "7200s"},
            {},
            {},
        ),
        (
            {"flex_start": True, "max_wait": "0"},
            {"strategy": "FLEX_START", "maxWaitDuration": "0s"},
            {},
            {},
        ),
        ({"spot": True}, {"strategy": "SPOT"}, {}, {}),
        (
            {"reservation": "any"},
            {},
            {"reservationAffinity": {"reservationAffinityType": "ANY_RESERVATION"}},
            {},
        ),
        (
            {"reservation": "us-central1-a/my-h100s"},
            {},
            {
                "reservationAffinity": {
                    "reservationAffinityType": "SPECIFIC_RESERVATION",
                    "key": "compute.googleapis.com/reservation-name",
                    "values": ["projects/my-project/zones/us-central1-a/reservations/my-h100s"],
                }
            },
            {},
        ),
        (
            {"persistent_resource": "team-h100-pool"},
            {},
            {},
            {"persistentResourceId": "team-h100-pool"},
        ),
        ({"timeout": "1h30m"}, {"timeout": "5400s"}, {}, {}),
        ({"no_platform_retries": True}, {"disableRetries": True}, {}, {}),
        (
            {"capacity": "flex:2h,spot,standard", "regions": ("us-central1", "europe-west4")},
            {"strategy": "FLEX_START", "maxWaitDuration": "7200s"},
            {},
            {},
        ),
    ],
)
def test_each_placement_flag_makes_a_body_vertex_accepts(
    flags: dict[str, Any],
    scheduling_fields: dict[str, Any],
    machine_extra: dict[str, Any],
    spec_extra: dict[str, Any],
) -> None:
    body = _body(**flags)
    _passes(body)
    spec = body["jobSpec"]
    assert spec.get("scheduling", {}) == scheduling_fields
    machine = spec["workerPoolSpecs"][0]["machineSpec"]
    assert {k: machine[k] for k in machine_extra} == machine_extra
    assert "reservationAffinity" in machine or not machine_extra
    for key, value in spec_extra.items():
        assert spec[key] == value


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"spot": True, "flex_start": True}, "pick one"),
        ({"max_wait": "2h"}, "add --flex_start"),
        ({"spot": True, "reservation": "any"}, "never use reservations"),
        ({"flex_start": True, "reservation": "any"}, "never use reservations"),
        ({"persistent_resource": "pool-1", "spot": True}, "drop --spot"),
        ({"persistent_resource": "pool-1", "reservation": "any"}, "drop --reservation"),
        ({"persistent_resource": "Bad_ID"}, "expected the resource's ID"),
        ({"flex_start": True, "max_wait": "two hours"}, "not a duration"),
        ({"timeout": "0s"}, "longer than 0s"),
        ({"timeout": "-5m"}, "not a duration"),
        ({"reservation": "my-h100s"}, "ZONE/NAME"),
        ({"reservation": "europe-west4-a/h100s"}, "outside region us-central1"),
        (
            {
                "spot": True,
                "gpu_spec": None,
                "tpu_spec": "8xV3",
                "machine_type": None,
                "mode": JobMode.CPU,
            },
            "no capacity for",
        ),
        (
            {
                "flex_start": True,
                "gpu_spec": None,
                "machine_type": None,
                "mode": JobMode.CPU,
            },
            "CPU-only",
        ),
        ({"capacity": "spot", "spot": True}, "drop --spot"),
        ({"capacity": "cheap"}, "rungs are"),
        ({"capacity": "spot,spot"}, "twice"),
        ({"capacity": "reservation:europe-west4-a/h100s"}, "add its region"),
        ({"queue_timeout": "10m"}, "add --capacity"),
        ({"capacity": "spot", "queue_timeout": "0"}, "longer than 0s"),
    ],
)
def test_refused_combinations_say_what_to_do(flags: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words) as err:
        _plan(**flags)
    assert "\n" not in str(err.value)


def test_durations() -> None:
    assert scheduling.parse_duration("90s", "--x") == 90
    assert scheduling.parse_duration("1h30m", "--x") == 5400
    assert scheduling.parse_duration("1d", "--x") == 86400
    assert scheduling.parse_duration("600", "--x") == 600
    for bad in ("", "h", "1x", "1h 30m", "1.5h"):
        with pytest.raises(ValidationError):
            scheduling.parse_duration(bad, "--x")


def test_a_ladder_visits_every_region_on_a_rung_before_the_next_rung() -> None:
    rungs = scheduling.parse_ladder(
        "reservation:us-central1-a/r1,flex:1h,spot", project="my-project"
    )
    steps = scheduling.ladder_steps(rungs, ["us-central1", "europe-west4"], start=1)
    assert [(region, str(rung)) for region, rung in steps] == [
        ("us-central1", "reservation:projects/my-project/zones/us-central1-a/reservations/r1"),
        ("europe-west4", "flex:3600s"),
        ("us-central1", "flex:3600s"),
        ("europe-west4", "spot"),
        ("us-central1", "spot"),
    ]


def test_a_rung_keeps_the_jobs_timeout_and_retry_choice() -> None:
    base = scheduling.check(timeout="2h", no_platform_retries=True, accelerator=H100)
    spot = scheduling.Rung("spot").scheduling(base)
    assert spot.scheduling() == {"strategy": "SPOT", "timeout": "7200s", "disableRetries": True}
    assert scheduling.Rung("standard").scheduling(base).scheduling() == {
        "timeout": "7200s",
        "disableRetries": True,
    }
