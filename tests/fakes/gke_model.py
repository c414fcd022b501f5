"""GKE and Compute data for the fake in :mod:`tests.fakes.gke`: errors, Cluster validation and
defaults, and the default quota / accelerator catalogues.

Kept apart from the HTTP layer so the rules (what GKE accepts, what it fills in, how proto3
JSON renders it) can be read in one place.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from aiohttp import web

from .google_http import RPC_CODES
from .k8s_store import JsonObj

_COMPUTE_REASONS = {
    400: "invalid",
    401: "required",
    403: "forbidden",
    404: "notFound",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}

_CLUSTER_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?")
ZONE_RE = re.compile(r"([a-z]+-[a-z]+\d+)-([a-z])")
REGION_RE = re.compile(r"[a-z]+-[a-z]+\d+")

# Top-level fields of google.container.v1.Cluster (camelCase). Proto3 JSON also accepts the
# snake_case proto names, so both spellings pass; anything else is rejected like Google does.
_CLUSTER_FIELDS = {
    "name",
    "description",
    "initialNodeCount",
    "nodeConfig",
    "masterAuth",
    "loggingService",
    "monitoringService",
    "network",
    "clusterIpv4Cidr",
    "addonsConfig",
    "subnetwork",
    "nodePools",
    "locations",
    "enableKubernetesAlpha",
    "resourceLabels",
    "labelFingerprint",
    "legacyAbac",
    "networkPolicy",
    "ipAllocationPolicy",
    "masterAuthorizedNetworksConfig",
    "maintenancePolicy",
    "binaryAuthorization",
    "autoscaling",
    "networkConfig",
    "defaultMaxPodsConstraint",
    "resourceUsageExportConfig",
    "authenticatorGroupsConfig",
    "privateClusterConfig",
    "databaseEncryption",
    "verticalPodAutoscaling",
    "shieldedNodes",
    "releaseChannel",
    "workloadIdentityConfig",
    "meshCertificates",
    "costManagementConfig",
    "notificationConfig",
    "confidentialNodes",
    "identityServiceConfig",
    "selfLink",
    "zone",
    "endpoint",
    "initialClusterVersion",
    "currentMasterVersion",
    "currentNodeVersion",
    "createTime",
    "status",
    "statusMessage",
    "nodeIpv4CidrSize",
    "servicesIpv4Cidr",
    "instanceGroupUrls",
    "currentNodeCount",
    "expireTime",
    "location",
    "enableTpu",
    "tpuIpv4CidrBlock",
    "conditions",
    "autopilot",
    "id",
    "nodePoolDefaults",
    "loggingConfig",
    "monitoringConfig",
    "nodePoolAutoConfig",
    "etag",
    "fleet",
    "securityPostureConfig",
    "enableK8sBetaApis",
    "enterpriseConfig",
    "secretManagerConfig",
    "compliancePostureConfig",
    "satisfiesPzs",
    "satisfiesPzi",
    "userManagedKeysConfig",
    "rbacBindingConfig",
    "controlPlaneEndpointsConfig",
    "parentProductConfig",
    "alphaClusterFeatureGates",
    "anonymousAuthenticationConfig",
    "gkeAutoUpgradeConfig",
    "podAutoscaling",
    "clusterTelemetry",
    "tpuConfig",
    "podSecurityPolicyConfig",
    "protectConfig",
}

DEFAULT_QUOTAS: dict[str, float] = {
    "CPUS": 24.0,
    "NVIDIA_T4_GPUS": 4.0,
    "NVIDIA_P100_GPUS": 1.0,
    "NVIDIA_V100_GPUS": 0.0,
    "NVIDIA_L4_GPUS": 8.0,
    "PREEMPTIBLE_NVIDIA_T4_GPUS": 8.0,
    "DISKS_TOTAL_GB": 4096.0,
    "IN_USE_ADDRESSES": 8.0,
}
DEFAULT_ACCELERATORS: dict[str, tuple[str, int]] = {
    "nvidia-tesla-t4": ("NVIDIA T4", 4),
    "nvidia-tesla-p100": ("NVIDIA Tesla P100", 4),
    "nvidia-tesla-v100": ("NVIDIA V100", 8),
    "nvidia-tesla-p4": ("NVIDIA Tesla P4", 4),
    "nvidia-l4": ("NVIDIA L4", 8),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16),
    "nvidia-a100-80gb": ("NVIDIA A100 80GB", 8),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8),
}


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def now_google() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"


class GoogleError(Exception):
    """Raised inside handlers; rendered as google.rpc.Status (or Compute's error shape)."""

    def __init__(
        self,
        status: str,
        message: str,
        *,
        http: int | None = None,
        details: list[JsonObj] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.http = http if http is not None else RPC_CODES.get(status, (500, 2))[0]
        self.details = details
        self.headers = headers or {}

    def response(self, *, compute: bool = False) -> web.Response:
        error: JsonObj = {"code": self.http, "message": self.message}
        if compute:
            reason = _COMPUTE_REASONS.get(self.http, "backendError")
            error["errors"] = [{"message": self.message, "domain": "global", "reason": reason}]
        else:
            error["status"] = self.status
            if self.details:
                error["details"] = self.details
        return web.json_response({"error": error}, status=self.http, headers=self.headers)


def _bad_type(path: str, kind: str, value: object) -> GoogleError:
    return GoogleError("INVALID_ARGUMENT", f"Invalid value at '{path}' ({kind}), \"{value}\"")


def _as_bool(value: object, path: str) -> bool:
    # Google's JSON parser takes "true"/"false" strings for bools (the original caliban sent
    # them), so accept both and store real booleans.
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise _bad_type(path, "TYPE_BOOL", value)


def _as_int(value: object, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    raise _bad_type(path, "TYPE_INT64", value)


# Cluster fields whose values are proto maps: their keys are user data, not field names.
_MAP_FIELDS = {"resourceLabels", "labels", "metadata", "resourceManagerTags", "sysctls"}


def _camel_keys(obj: object) -> Any:
    """Proto3 JSON accepts snake_case field names; normalise them to the lowerCamel output."""
    if isinstance(obj, dict):
        out: JsonObj = {}
        for key, value in obj.items():
            name = snake_to_camel(key) if isinstance(key, str) else key
            out[name] = value if name in _MAP_FIELDS else _camel_keys(value)
        return out
    if isinstance(obj, list):
        return [_camel_keys(v) for v in obj]
    return obj


def normalise_cluster(
    project: str,
    location: str,
    raw: JsonObj,
    *,
    version: str,
    base_url: str = "",
    reject_unknown_fields: bool = True,
) -> JsonObj:
    """Validate a Cluster from a create body (or a test's seed) and fill in what GKE adds."""
    spec = _camel_keys(raw)
    unknown = sorted(set(spec) - _CLUSTER_FIELDS)
    if unknown and reject_unknown_fields:
        raise GoogleError(
            "INVALID_ARGUMENT",
            f"Invalid JSON payload received. Unknown name "
            f"\"{unknown[0]}\" at 'cluster': Cannot find field.",
        )
    name = spec.get("name")
    if not name:
        raise GoogleError("INVALID_ARGUMENT", "Cluster.name must be provided.")
    if not isinstance(name, str) or not _CLUSTER_NAME.fullmatch(name):
        raise GoogleError(
            "INVALID_ARGUMENT",
            f'Invalid value for field "cluster.name": '
            f'"{name}". Must be a match of regex '
            "'(?:[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?)' (only alphanumerics and "
            "'-' allowed, must start with a letter and end with an "
            "alphanumeric, and must be no longer than 40 characters).",
        )
    zone = ZONE_RE.fullmatch(location)
    region = zone.group(1) if zone else location
    if not zone and not REGION_RE.fullmatch(location):
        raise GoogleError(
            "INVALID_ARGUMENT", f'Location "{location}" is not a valid zone or region.'
        )
    default_locations = [location] if zone else [f"{region}-{s}" for s in "abc"]
    pools_in = spec.get("nodePools") or [
        {
            "name": "default-pool",
            "initialNodeCount": spec.get("initialNodeCount", 3),
            "config": spec.get("nodeConfig") or {},
        }
    ]
    pools = [_node_pool(p, i, version) for i, p in enumerate(pools_in)]
    cluster: JsonObj = {
        key: value
        for key, value in spec.items()
        if key not in ("initialNodeCount", "nodeConfig", "status", "endpoint", "masterAuth")
    }
    cluster.update(
        name=name,
        nodePools=pools,
        location=location,
        zone=location,
        locations=list(spec.get("locations") or default_locations),
        selfLink=f"{base_url}/v1/projects/{project}/locations/{location}/clusters/{name}",
        createTime=now_google(),
        currentMasterVersion=version,
        currentNodeVersion=version,
        initialClusterVersion=spec.get("initialClusterVersion", version),
        releaseChannel=spec.get("releaseChannel") or {"channel": "REGULAR"},
        network=spec.get("network", "default"),
        subnetwork=spec.get("subnetwork", "default"),
        clusterIpv4Cidr="10.4.0.0/14",
        servicesIpv4Cidr="34.118.224.0/20",
        loggingService="logging.googleapis.com/kubernetes",
        monitoringService="monitoring.googleapis.com/kubernetes",
        currentNodeCount=sum(p.get("initialNodeCount", 0) for p in pools),
        id=secrets.token_hex(16),
        etag=secrets.token_hex(8),
    )
    if "ipAllocationPolicy" in spec:
        policy = dict(spec["ipAllocationPolicy"])
        if "useIpAliases" in policy:
            policy["useIpAliases"] = _as_bool(
                policy["useIpAliases"], "cluster.ip_allocation_policy.use_ip_aliases"
            )
        cluster["ipAllocationPolicy"] = policy
    if "enableTpu" in spec:
        cluster["enableTpu"] = _as_bool(spec["enableTpu"], "cluster.enable_tpu")
    cluster["autoscaling"] = _autoscaling(spec.get("autoscaling") or {})
    return cluster


def _node_pool(raw: JsonObj, index: int, version: str) -> JsonObj:
    where = f"cluster.node_pools[{index}]"
    if not raw.get("name"):
        raise GoogleError("INVALID_ARGUMENT", f"{where}.name must be provided.")
    config = dict(raw.get("config") or {})
    config.setdefault("machineType", "e2-medium")
    config.setdefault("diskSizeGb", 100)
    config.setdefault("imageType", "COS_CONTAINERD")
    accelerators = []
    for j, acc in enumerate(config.get("accelerators") or []):
        count = _as_int(
            acc.get("acceleratorCount", 0),
            f"{where}.config.accelerators[{j}].accelerator_count",
        )
        accelerators.append({**acc, "acceleratorCount": str(count)})  # int64 -> string
    if accelerators:
        config["accelerators"] = accelerators
    pool: JsonObj = {
        **raw,
        "name": raw["name"],
        "config": config,
        "version": version,
        "status": "RUNNING",
        "management": raw.get("management") or {"autoUpgrade": True, "autoRepair": True},
    }
    pool["initialNodeCount"] = _as_int(
        raw.get("initialNodeCount", 3), f"{where}.initial_node_count"
    )
    autoscaling = raw.get("autoscaling") or {}
    if autoscaling:
        pool["autoscaling"] = {
            k: (
                _as_bool(v, f"{where}.autoscaling.{k}")
                if k == "enabled"
                else _as_int(v, f"{where}.autoscaling.{k}")
                if k.endswith("NodeCount")
                else v
            )
            for k, v in autoscaling.items()
        }
    return pool


def _autoscaling(raw: JsonObj) -> JsonObj:
    out: JsonObj = {**raw, "autoscalingProfile": raw.get("autoscalingProfile", "BALANCED")}
    if "enableNodeAutoprovisioning" in raw:
        out["enableNodeAutoprovisioning"] = _as_bool(
            raw["enableNodeAutoprovisioning"],
            "cluster.autoscaling.enable_node_autoprovisioning",
        )
    limits = []
    for i, limit in enumerate(raw.get("resourceLimits") or []):
        entry: JsonObj = {"resourceType": limit.get("resourceType")}
        for key in ("minimum", "maximum"):
            value = _as_int(limit.get(key, 0), f"cluster.autoscaling.resource_limits[{i}].{key}")
            if value:
                entry[key] = str(value)  # int64 as a string; zero omitted
        limits.append(entry)
    if limits:
        out["resourceLimits"] = limits
    else:
        out.pop("resourceLimits", None)
    return out
