"""GKE cluster rules (caliban.platforms.kubernetes.gkespec), with the original's cases ported."""

from __future__ import annotations

import pytest

from caliban.errors import ValidationError
from caliban.platforms.kubernetes import gkespec


def quotas(**limits: float) -> list[dict[str, object]]:
    return [{"metric": m, "limit": v, "usage": 0.0} for m, v in limits.items()]


def test_resource_limits_from_quotas_as_the_original() -> None:
    # caliban-behavior.md §6.2: CPUS 1, NVIDIA_P100_GPUS 2, bogus 5.
    limits = gkespec.resource_limits(quotas(CPUS=1, NVIDIA_P100_GPUS=2, bogus=5))
    assert limits == [
        {"resourceType": "cpu", "maximum": "1"},
        {"resourceType": "memory", "maximum": "64"},
        {"resourceType": "nvidia-tesla-p100", "maximum": "2"},
    ]
    # ...and with no P100 quota the P100 limit is dropped.
    assert gkespec.resource_limits(quotas(CPUS=1, NVIDIA_P100_GPUS=0, bogus=5)) == limits[:2]


def test_newer_gpus_use_their_gke_names() -> None:
    limits = gkespec.resource_limits(
        quotas(
            NVIDIA_L4_GPUS=8,
            NVIDIA_A100_80GB_GPUS=4,
            NVIDIA_H100_GPUS=8,
            PREEMPTIBLE_NVIDIA_T4_GPUS=8,
            NVIDIA_T4_VWS_GPUS=2,
            NVIDIA_FUTURE_GPUS=1,
        )
    )
    assert {d["resourceType"]: d["maximum"] for d in limits} == {
        "nvidia-l4": "8",
        "nvidia-a100-80gb": "4",
        "nvidia-h100-80gb": "8",
        "nvidia-tesla-future": "1",
    }


@pytest.mark.parametrize(
    ("accelerator", "count", "limits", "fits"),
    [
        ("nvidia-tesla-k80", 1, {"nvidia-tesla-p100": 1}, False),
        ("nvidia-tesla-k80", 2, {"nvidia-tesla-p100": 1, "nvidia-tesla-k80": 1}, False),
        ("nvidia-tesla-k80", 1, {"nvidia-tesla-p100": 1, "nvidia-tesla-k80": 1}, True),
    ],
)
def test_gpu_spec_against_limits(
    accelerator: str, count: int, limits: dict[str, int], fits: bool
) -> None:
    assert gkespec.gpu_fits_limits(accelerator, count, limits) is fits


def test_limits_of_a_cluster() -> None:
    cluster = {
        "autoscaling": {
            "resourceLimits": [
                {"resourceType": "cpu", "maximum": "24"},
                {"resourceType": "nvidia-tesla-t4", "maximum": "4"},
            ]
        }
    }
    assert gkespec.limits_of(cluster) == {"cpu": 24, "nvidia-tesla-t4": 4}
    assert gkespec.limits_of({}) == {}


def test_dashboard_url() -> None:
    assert gkespec.dashboard_url("bar", "us-central1-a", "foo") == (
        "https://console.cloud.google.com/kubernetes/clusters/details/us-central1-a/foo?project=bar"
    )


def test_job_url() -> None:
    assert gkespec.job_url("p", "us-central1", "c", "default", "j") == (
        "https://console.cloud.google.com/kubernetes/job/us-central1/c/default/j?project=p"
    )


@pytest.mark.parametrize(
    ("text", "zone", "region"),
    [
        ("us-central1-a", True, "us-central1"),
        ("europe-west4", False, "europe-west4"),
        (" US-EAST1-B ", True, "us-east1"),
    ],
)
def test_locations(text: str, zone: bool, region: str) -> None:
    loc = gkespec.parse_location(text)
    assert (loc.is_zone, loc.region) == (zone, region)


@pytest.mark.parametrize("text", ["", "us", "central1-a", "us-central1-a-b"])
def test_bad_locations(text: str) -> None:
    with pytest.raises(ValidationError):
        gkespec.parse_location(text)


@pytest.mark.parametrize("name", ["Blue", "1abc", "a-", "a" * 41, "a_b"])
def test_bad_cluster_names(name: str) -> None:
    with pytest.raises(ValidationError, match="cluster name"):
        gkespec.check_cluster_name(name)


@pytest.mark.parametrize(
    ("text", "channel"),
    [("regular", "REGULAR"), (" Rapid", "RAPID"), ("UNSPECIFIED", "UNSPECIFIED")],
)
def test_release_channels(text: str, channel: str) -> None:
    assert gkespec.parse_release_channel(text) == channel


def test_unknown_release_channel() -> None:
    with pytest.raises(ValidationError, match="STABLE"):
        gkespec.parse_release_channel("nightly")


def test_create_body() -> None:
    body = gkespec.create_body(
        project="p",
        name="c",
        location=gkespec.Location("us-central1-a"),
        release_channel="STABLE",
        node_locations=["us-central1-a"],
        limits=[{"resourceType": "cpu", "maximum": "8"}],
    )
    assert body["parent"] == "projects/p/locations/us-central1-a"
    cluster = body["cluster"]
    assert cluster["autoscaling"]["enableNodeAutoprovisioning"] is True
    assert cluster["autoscaling"]["resourceLimits"] == [{"resourceType": "cpu", "maximum": "8"}]
    assert cluster["releaseChannel"] == {"channel": "STABLE"}
    assert cluster["locations"] == ["us-central1-a"]
    assert cluster["nodePools"][0]["name"] == "default-pool"


def test_pick_cluster() -> None:
    a, b = {"name": "a"}, {"name": "b"}
    assert gkespec.pick_cluster([a], None, "p") is a
    assert gkespec.pick_cluster([a, b], "b", "p") is b
    with pytest.raises(ValidationError, match="several"):
        gkespec.pick_cluster([a, b], None, "p")
    with pytest.raises(ValidationError, match="no GKE cluster in"):
        gkespec.pick_cluster([], None, "p")
    with pytest.raises(ValidationError, match="found: a, b"):
        gkespec.pick_cluster([a, b], "c", "p")


def test_node_pool_rows() -> None:
    pools = [
        {
            "name": "gpu",
            "config": {
                "machineType": "n1-standard-8",
                "accelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": "2"}],
            },
            "autoscaling": {"enabled": True, "maxNodeCount": 5},
        },
        {"name": "default-pool", "config": {"machineType": "e2-medium"}},
    ]
    assert gkespec.node_pool_rows(pools) == [
        ("gpu", "n1-standard-8", "nvidia-tesla-t4(2)", "5"),
        ("default-pool", "e2-medium", "", ""),
    ]
