"""GKE cluster requests and the rules around them. Pure.

The REST calls live in :mod:`caliban.adapters.cloud.gke_api`; what goes into them, and how
their answers are read, is here so it can be tested without a network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caliban.core.accelerators import _lookup, catalog
from caliban.errors import ValidationError

RELEASE_CHANNELS = ("UNSPECIFIED", "RAPID", "REGULAR", "STABLE")
DEFAULT_CLUSTER_NAME = "blueshift"
# GiB of memory the autoprovisioner may add per CPU of quota (the original's ratio).
MEMORY_PER_CPU = 64

_CLUSTER_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?")
_ZONE = re.compile(r"([a-z]+-[a-z]+[0-9]+)-([a-z])")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_GPU_QUOTA = re.compile(r"NVIDIA_([A-Z0-9_]+)_GPUS")

NODE_SCOPES = [
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring",
    "https://www.googleapis.com/auth/service.management.readonly",
    "https://www.googleapis.com/auth/servicecontrol",
    "https://www.googleapis.com/auth/trace.append",
]
AUTOPROVISIONING_SCOPES = [
    "https://www.googleapis.com/auth/compute",
    "https://www.googleapis.com/auth/cloud-platform",
]


@dataclass(frozen=True)
class Location:
    """A zone (``us-central1-a``) or a region (``us-central1``)."""

    name: str

    @property
    def is_zone(self) -> bool:
        return _ZONE.fullmatch(self.name) is not None

    @property
    def region(self) -> str:
        zone = _ZONE.fullmatch(self.name)
        return zone.group(1) if zone else self.name


def parse_location(text: str | None, *, flag: str = "--zone") -> Location:
    value = (text or "").strip().lower()
    if not value:
        raise ValidationError(f"{flag} is required, e.g. {flag} us-central1-a")
    if not (_ZONE.fullmatch(value) or _REGION.fullmatch(value)):
        raise ValidationError(
            f"{flag} {text!r} is neither a zone (us-central1-a) nor a region (us-central1)"
        )
    return Location(value)


def check_cluster_name(name: str) -> str:
    if not _CLUSTER_NAME.fullmatch(name):
        raise ValidationError(
            f"cluster name {name!r} is not valid: 1-40 lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return name


def parse_release_channel(text: str) -> str:
    value = text.strip().upper()
    if value not in RELEASE_CHANNELS:
        raise ValidationError(f"release channel {text!r}: use one of {', '.join(RELEASE_CHANNELS)}")
    return value


def gpu_quota_label(metric: str) -> str | None:
    """The GKE accelerator name of a Compute GPU quota metric, or None.

    ``NVIDIA_T4_GPUS`` is ``nvidia-tesla-t4``, ``NVIDIA_L4_GPUS`` ``nvidia-l4``.
    Preemptible and virtual-workstation quotas are not node-autoprovisioning limits.
    """
    match = _GPU_QUOTA.fullmatch(metric)
    if match is None or metric.startswith("PREEMPTIBLE_") or "_VWS" in metric:
        return None
    short = match.group(1)
    known = _lookup(short, catalog().gpus.values())
    if known is not None:
        return catalog().gpus[known].gke
    return f"nvidia-tesla-{short.lower().replace('_', '-')}"


def resource_limits(quotas: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Node auto-provisioning limits from a region's Compute quotas.

    ``CPUS`` gives ``cpu`` (its limit) and ``memory`` (64 GiB per CPU); each
    ``NVIDIA_<X>_GPUS`` gives that accelerator. Limits below 1 and other metrics are
    left out. int64 values are strings, as proto3 JSON has them.
    """
    out: list[dict[str, str]] = []
    for quota in quotas:
        metric = str(quota.get("metric", ""))
        limit = int(float(quota.get("limit") or 0))
        if limit < 1:
            continue
        if metric == "CPUS":
            out.append({"resourceType": "cpu", "maximum": str(limit)})
            out.append({"resourceType": "memory", "maximum": str(limit * MEMORY_PER_CPU)})
        elif (label := gpu_quota_label(metric)) is not None:
            out.append({"resourceType": label, "maximum": str(limit)})
    return out


def gpu_fits_limits(accelerator: str, count: int, limits: Mapping[str, int]) -> bool:
    """Whether the autoprovisioner may create nodes with ``count`` of ``accelerator``."""
    return count <= limits.get(accelerator, 0)


def limits_of(cluster: Mapping[str, Any]) -> dict[str, int]:
    """A cluster's autoprovisioning resource limits, as ``{resourceType: maximum}``."""
    autoscaling = cluster.get("autoscaling") or {}
    return {
        str(item["resourceType"]): int(item.get("maximum") or 0)
        for item in autoscaling.get("resourceLimits") or []
        if item.get("resourceType")
    }


def create_body(
    *,
    project: str,
    name: str,
    location: Location,
    release_channel: str,
    node_locations: list[str] | None,
    limits: list[dict[str, str]],
) -> dict[str, Any]:
    """The ``projects.locations.clusters.create`` request body.

    Node auto-provisioning makes GPU and CPU node pools on demand within
    ``limits``; the small default pool runs the system pods.
    """
    cluster: dict[str, Any] = {
        "name": name,
        "ipAllocationPolicy": {"useIpAliases": True},
        "autoscaling": {
            "enableNodeAutoprovisioning": True,
            "autoprovisioningNodePoolDefaults": {"oauthScopes": AUTOPROVISIONING_SCOPES},
            "resourceLimits": limits,
        },
        "nodePools": [
            {"name": "default-pool", "initialNodeCount": 3, "config": {"oauthScopes": NODE_SCOPES}}
        ],
        "releaseChannel": {"channel": release_channel},
    }
    if node_locations:
        cluster["locations"] = node_locations
    return {"cluster": cluster, "parent": f"projects/{project}/locations/{location.name}"}


def dashboard_url(project: str, location: str, cluster: str) -> str:
    return (
        f"https://console.cloud.google.com/kubernetes/clusters/details/{location}/{cluster}"
        f"?project={project}"
    )


def job_url(project: str, location: str, cluster: str, namespace: str, name: str) -> str:
    return (
        f"https://console.cloud.google.com/kubernetes/job/{location}/{cluster}/{namespace}/"
        f"{name}?project={project}"
    )


def pick_cluster(
    clusters: Sequence[Mapping[str, Any]], name: str | None, where: str
) -> Mapping[str, Any]:
    """The named cluster, or the only one when no name is given."""
    if name is not None:
        for cluster in clusters:
            if cluster.get("name") == name:
                return cluster
        known = ", ".join(sorted(str(c.get("name")) for c in clusters)) or "none"
        raise ValidationError(f"no GKE cluster named {name!r} in {where} (found: {known})")
    if not clusters:
        raise ValidationError(
            f"no GKE cluster in {where}",
            hint="create one with `caliban cluster create`, or pass --kubeconfig for another "
            "Kubernetes cluster",
        )
    if len(clusters) > 1:
        names = ", ".join(sorted(str(c.get("name")) for c in clusters))
        raise ValidationError(f"several GKE clusters in {where} ({names}): pass --cluster_name")
    return clusters[0]


def node_pool_rows(pools: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """NAME, MACHINE TYPE, ACCELERATORS ``type(count)``, MAX NODES."""
    rows = []
    for pool in pools:
        config = pool.get("config") or {}
        accels = ", ".join(
            f"{a.get('acceleratorType')}({a.get('acceleratorCount')})"
            for a in config.get("accelerators") or []
        )
        autoscaling = pool.get("autoscaling") or {}
        max_nodes = str(autoscaling.get("maxNodeCount", "")) if autoscaling.get("enabled") else ""
        rows.append((str(pool.get("name")), str(config.get("machineType", "")), accels, max_nodes))
    return rows
