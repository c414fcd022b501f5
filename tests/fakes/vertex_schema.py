"""Strict proto3-JSON parsing and validation of a Vertex AI v1 ``CustomJob`` request body.

Google's front end parses the body against the proto before the service sees it: unknown
fields, wrong JSON types and unknown enum names fail with 400 INVALID_ARGUMENT and an
``Invalid JSON payload received`` / ``Invalid value at`` message naming the proto path. Then
the service checks required fields and cross-field rules and reports them together as
``List of found errors``. This module reproduces both stages so a client bug (a typo'd field,
an int where a string is expected, a bad label) fails in tests the way it would in production.

Limitations, on purpose: enum values are accepted by name only (proto3 JSON also allows the
number), and only the v1 fields a training job uses are modelled (see ``CUSTOM_JOB``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_PKG = "type.googleapis.com/google.cloud.aiplatform.v1."

JOB_STATES = (
    "JOB_STATE_UNSPECIFIED",
    "JOB_STATE_QUEUED",
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLING",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_PAUSED",
    "JOB_STATE_EXPIRED",
    "JOB_STATE_UPDATING",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
)
TERMINAL_STATES = frozenset(
    {
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
        "JOB_STATE_PARTIALLY_SUCCEEDED",
    }
)
ACCELERATOR_TYPES = (
    "ACCELERATOR_TYPE_UNSPECIFIED",
    "NVIDIA_TESLA_K80",
    "NVIDIA_TESLA_P100",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_P4",
    "NVIDIA_TESLA_T4",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
    "NVIDIA_L4",
    "NVIDIA_H100_80GB",
    "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB",
    "NVIDIA_B200",
    "NVIDIA_GB200",
    "NVIDIA_RTX_PRO_6000",
    "TPU_V2",
    "TPU_V3",
    "TPU_V4_POD",
    "TPU_V5_LITEPOD",
)
# ON_DEMAND and LOW_COST still parse (they are in the enum) but are refused as deprecated.
STRATEGIES = ("STRATEGY_UNSPECIFIED", "ON_DEMAND", "LOW_COST", "STANDARD", "SPOT", "FLEX_START")
ALLOWED_STRATEGIES = frozenset({"STANDARD", "SPOT", "FLEX_START"})

# Machine family prefix -> accelerators it can carry. Families not listed are not checked.
MACHINE_ACCELERATORS: dict[str, frozenset[str]] = {
    "n1-": frozenset(
        {
            "NVIDIA_TESLA_T4",
            "NVIDIA_TESLA_V100",
            "NVIDIA_TESLA_P100",
            "NVIDIA_TESLA_P4",
            "NVIDIA_TESLA_K80",
        }
    ),
    "a2-highgpu-": frozenset({"NVIDIA_TESLA_A100"}),
    "a2-megagpu-": frozenset({"NVIDIA_TESLA_A100"}),
    "a2-ultragpu-": frozenset({"NVIDIA_A100_80GB"}),
    "g2-": frozenset({"NVIDIA_L4"}),
    "a3-highgpu-": frozenset({"NVIDIA_H100_80GB"}),
    "a3-edgegpu-": frozenset({"NVIDIA_H100_80GB"}),
    "a3-megagpu-": frozenset({"NVIDIA_H100_MEGA_80GB"}),
    "a3-ultragpu-": frozenset({"NVIDIA_H200_141GB"}),
    "a4-highgpu-": frozenset({"NVIDIA_B200"}),
    "a4x-highgpu-": frozenset({"NVIDIA_GB200"}),
    "g4-standard-": frozenset({"NVIDIA_RTX_PRO_6000"}),
    "cloud-tpu": frozenset({"TPU_V2", "TPU_V3"}),
    "ct4p-hightpu-": frozenset({"TPU_V4_POD"}),
    "ct5lp-hightpu-": frozenset({"TPU_V5_LITEPOD"}),
}
# TPU VM machine families: Vertex needs machine_spec.tpu_topology for them.
TPU_VM_PREFIXES = ("ct4p-", "ct5lp-", "ct5p-", "ct6e-")

LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
MAX_LABELS = 64
_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")
_INT = re.compile(r"^-?\d+$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


# ------------------------------------------------------------------------- the schema DSL
@dataclass(frozen=True)
class Scalar:
    """A proto scalar or well-known type: string, bool, int32, int64, duration, any."""

    kind: str


@dataclass(frozen=True)
class Enum:
    """A proto enum: JSON carries the value name; index 0 is the (omitted) default."""

    type_name: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class Repeated:
    """A repeated field: a JSON array of ``item``."""

    item: Spec


@dataclass(frozen=True)
class MapOf:
    """A ``map<string, V>`` field: a JSON object."""

    value: Spec


@dataclass(frozen=True)
class Message:
    """A proto message: ``fields`` maps proto (snake_case) names to specs."""

    type_name: str
    fields: dict[str, Spec]
    output_only: frozenset[str] = field(default_factory=frozenset)


Spec = Scalar | Enum | Repeated | MapOf | Message

STRING, BOOL, INT32, INT64 = Scalar("string"), Scalar("bool"), Scalar("int32"), Scalar("int64")
DURATION, TIMESTAMP, ANY = Scalar("duration"), Scalar("timestamp"), Scalar("any")

ENV_VAR = Message(_PKG + "EnvVar", {"name": STRING, "value": STRING})
CONTAINER_SPEC = Message(
    _PKG + "ContainerSpec",
    {
        "image_uri": STRING,
        "command": Repeated(STRING),
        "args": Repeated(STRING),
        "env": Repeated(ENV_VAR),
    },
)
PYTHON_PACKAGE_SPEC = Message(
    _PKG + "PythonPackageSpec",
    {
        "executor_image_uri": STRING,
        "package_uris": Repeated(STRING),
        "python_module": STRING,
        "args": Repeated(STRING),
        "env": Repeated(ENV_VAR),
    },
)
RESERVATION_AFFINITY = Message(
    _PKG + "ReservationAffinity",
    {
        "reservation_affinity_type": Enum(
            _PKG + "ReservationAffinity.Type",
            ("TYPE_UNSPECIFIED", "NO_RESERVATION", "ANY_RESERVATION", "SPECIFIC_RESERVATION"),
        ),
        "key": STRING,
        "values": Repeated(STRING),
    },
)
MACHINE_SPEC = Message(
    _PKG + "MachineSpec",
    {
        "machine_type": STRING,
        "accelerator_type": Enum(_PKG + "AcceleratorType", ACCELERATOR_TYPES),
        "accelerator_count": INT32,
        "gpu_partition_size": STRING,
        "tpu_topology": STRING,
        "reservation_affinity": RESERVATION_AFFINITY,
    },
)
DISK_SPEC = Message(_PKG + "DiskSpec", {"boot_disk_type": STRING, "boot_disk_size_gb": INT32})
NFS_MOUNT = Message(_PKG + "NfsMount", {"server": STRING, "path": STRING, "mount_point": STRING})
WORKER_POOL_SPEC = Message(
    _PKG + "WorkerPoolSpec",
    {
        "container_spec": CONTAINER_SPEC,
        "python_package_spec": PYTHON_PACKAGE_SPEC,
        "machine_spec": MACHINE_SPEC,
        "replica_count": INT64,
        "nfs_mounts": Repeated(NFS_MOUNT),
        "disk_spec": DISK_SPEC,
    },
)
SCHEDULING = Message(
    _PKG + "Scheduling",
    {
        "timeout": DURATION,
        "restart_job_on_worker_restart": BOOL,
        "strategy": Enum(_PKG + "Scheduling.Strategy", STRATEGIES),
        "disable_retries": BOOL,
        "max_wait_duration": DURATION,
    },
)
CUSTOM_JOB_SPEC = Message(
    _PKG + "CustomJobSpec",
    {
        "persistent_resource_id": STRING,
        "worker_pool_specs": Repeated(WORKER_POOL_SPEC),
        "scheduling": SCHEDULING,
        "service_account": STRING,
        "network": STRING,
        "reserved_ip_ranges": Repeated(STRING),
        "base_output_directory": Message(_PKG + "GcsDestination", {"output_uri_prefix": STRING}),
        "protected_artifact_location_id": STRING,
        "tensorboard": STRING,
        "enable_web_access": BOOL,
        "enable_dashboard_access": BOOL,
        "experiment": STRING,
        "experiment_run": STRING,
        "models": Repeated(STRING),
    },
)
CUSTOM_JOB = Message(
    _PKG + "CustomJob",
    {
        "name": STRING,
        "display_name": STRING,
        "job_spec": CUSTOM_JOB_SPEC,
        "state": Enum(_PKG + "JobState", JOB_STATES),
        "create_time": TIMESTAMP,
        "start_time": TIMESTAMP,
        "end_time": TIMESTAMP,
        "update_time": TIMESTAMP,
        "error": ANY,
        "labels": MapOf(STRING),
        "encryption_spec": Message(_PKG + "EncryptionSpec", {"kms_key_name": STRING}),
        "web_access_uris": MapOf(STRING),
        "satisfies_pzs": BOOL,
        "satisfies_pzi": BOOL,
    },
    output_only=frozenset(
        {
            "name",
            "state",
            "create_time",
            "start_time",
            "end_time",
            "update_time",
            "error",
            "web_access_uris",
            "satisfies_pzs",
            "satisfies_pzi",
        }
    ),
)


# ------------------------------------------------------------------------------- parsing
class SchemaError(ValueError):
    """The body does not parse: ``message`` is Google's text, ``field`` the proto path."""

    def __init__(self, message: str, field_path: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field_path


def camel(name: str) -> str:
    """proto field name -> its JSON (lowerCamelCase) name."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _invalid(path: str, what: str, value: Any) -> SchemaError:
    return SchemaError(f"Invalid value at '{path}' ({what}), {json.dumps(value)}", path)


def parse(spec: Spec, value: Any, path: str) -> Any:
    """Parse one JSON value against ``spec`` and return its canonical wire form.

    The canonical form is what Google prints back: camelCase keys, int64 as strings, enums as
    names, and proto3 defaults (0, "", false, [], {}, enum 0) left out. ``None`` means unset.
    """
    if value is None:  # JSON null means "default" in proto3 JSON
        return None
    if isinstance(spec, Message):
        return _parse_message(spec, value, path)
    if isinstance(spec, Repeated):
        if not isinstance(value, list):
            raise _invalid(path, _describe(spec.item), value)
        items = []
        for i, item in enumerate(value):
            if item is None:  # proto3 JSON refuses null inside a list
                raise _invalid(f"{path}[{i}]", _describe(spec.item), item)
            parsed = parse(spec.item, item, f"{path}[{i}]")
            # Inside a list a default value is still an element: keep it, in wire form.
            items.append(parsed if parsed is not None else _default(spec.item))
        return items or None
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise _invalid(path, "TYPE_MESSAGE", value)
        out = {str(k): parse(spec.value, v, f"{path}[{k}]") for k, v in value.items()}
        return {k: ("" if v is None else v) for k, v in out.items()} or None
    if isinstance(spec, Enum):
        if not isinstance(value, str) or value not in spec.names:
            raise _invalid(path, spec.type_name, value)
        return None if value == spec.names[0] else value
    return _parse_scalar(spec.kind, value, path)


def _parse_message(spec: Message, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(path, spec.type_name, value)
    by_json = {camel(name): name for name in spec.fields}
    out: dict[str, Any] = {}
    for key, item in value.items():
        # proto3 JSON parsers accept both the lowerCamelCase and the original field name.
        name = key if key in spec.fields else by_json.get(key)
        if name is None:
            raise SchemaError(
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': "
                "Cannot find field.",
                path,
            )
        parsed = parse(spec.fields[name], item, f"{path}.{name}")
        if parsed is not None and name not in spec.output_only:
            out[camel(name)] = parsed
    return out


def _parse_scalar(kind: str, value: Any, path: str) -> Any:
    if kind == "any":
        return value
    if kind in ("string", "timestamp"):
        if not isinstance(value, str):
            raise _invalid(path, "TYPE_STRING", value)
        return value or None
    if kind == "bool":
        if not isinstance(value, bool):
            raise _invalid(path, "TYPE_BOOL", value)
        return value or None
    if kind == "duration":
        if not isinstance(value, str) or not _DURATION.match(value):
            raise _invalid(path, "type.googleapis.com/google.protobuf.Duration", value)
        seconds = float(value[:-1])
        return None if seconds == 0 else (f"{int(seconds)}s" if seconds.is_integer() else value)
    # int32 / int64: numbers or decimal strings; bools are not numbers here.
    lo, hi = _INT32 if kind == "int32" else _INT64
    what = "TYPE_INT32" if kind == "int32" else "TYPE_INT64"
    if isinstance(value, bool):
        raise _invalid(path, what, value)
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INT.match(value):
        number = int(value)
    else:
        raise _invalid(path, what, value)
    if not lo <= number <= hi:
        raise _invalid(path, what, value)
    if number == 0:
        return None
    return str(number) if kind == "int64" else number


def _describe(spec: Spec) -> str:
    if isinstance(spec, Message):
        return spec.type_name
    if isinstance(spec, Enum):
        return spec.type_name
    if isinstance(spec, Scalar):
        return "TYPE_" + spec.kind.upper()
    return "TYPE_MESSAGE"


def _default(spec: Spec) -> Any:
    """The wire form of a proto default value, for list elements that happen to be default."""
    if isinstance(spec, Message):
        return {}
    if isinstance(spec, Enum):
        return spec.names[0]
    if isinstance(spec, Scalar):
        return {"int64": "0", "int32": 0, "bool": False, "duration": "0s"}.get(spec.kind, "")
    return None


# ---------------------------------------------------------------------- service validation
def validate(
    job: dict[str, Any], *, check_machine_accelerator: bool = True
) -> list[tuple[str, str]]:
    """Service-side checks on a parsed CustomJob; returns (proto path, message) violations."""
    errors: list[tuple[str, str]] = []
    name = job.get("displayName", "")
    if not name:
        errors.append(("custom_job.display_name", "Required field is not set."))
    elif len(name) > 128:
        errors.append(("custom_job.display_name", "Display name must be at most 128 characters."))
    errors.extend(_validate_labels(job.get("labels", {})))
    spec = job.get("jobSpec")
    if spec is None:
        errors.append(("custom_job.job_spec", "Required field is not set."))
        return errors
    pools = spec.get("workerPoolSpecs", [])
    if not pools:
        errors.append(("custom_job.job_spec.worker_pool_specs", "Required field is not set."))
    if len(pools) > 4:
        errors.append(
            ("custom_job.job_spec.worker_pool_specs", "At most 4 worker pool specs are allowed.")
        )
    for i, pool in enumerate(pools):
        path = f"custom_job.job_spec.worker_pool_specs[{i}]"
        if not pool and i > 0:
            continue  # an empty pool 1..3 is how a caller skips that role
        errors.extend(_validate_pool(pool, path, i, check_machine_accelerator))
    strategy = spec.get("scheduling", {}).get("strategy")
    if strategy is not None and strategy not in ALLOWED_STRATEGIES:
        errors.append(
            (
                "custom_job.job_spec.scheduling.strategy",
                f"Strategy {strategy} is deprecated; use STANDARD, SPOT or FLEX_START.",
            )
        )
    timeout = spec.get("scheduling", {}).get("timeout", "")
    if timeout.startswith("-"):
        errors.append(("custom_job.job_spec.scheduling.timeout", "Timeout must be positive."))
    return errors


def _validate_pool(
    pool: dict[str, Any], path: str, index: int, check_machine_accelerator: bool
) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    machine = pool.get("machineSpec", {})
    machine_type = machine.get("machineType", "")
    if not machine_type:
        errors.append((f"{path}.machine_spec.machine_type", "Required field is not set."))
    replicas = int(pool.get("replicaCount", "0"))
    if replicas < 1:
        errors.append((f"{path}.replica_count", "Replica count must be at least 1."))
    elif index == 0 and replicas != 1:
        errors.append(
            (f"{path}.replica_count", "The first worker pool must have exactly 1 replica.")
        )
    accelerator = machine.get("acceleratorType")
    count = machine.get("acceleratorCount", 0)
    if accelerator and count < 1:
        errors.append(
            (
                f"{path}.machine_spec.accelerator_count",
                "Accelerator count must be positive when an accelerator type is set.",
            )
        )
    if count and not accelerator:
        errors.append(
            (
                f"{path}.machine_spec.accelerator_type",
                "Accelerator type must be set when accelerator count is set.",
            )
        )
    if accelerator and machine_type and check_machine_accelerator:
        for prefix, allowed in MACHINE_ACCELERATORS.items():
            if machine_type.startswith(prefix) and accelerator not in allowed:
                errors.append(
                    (
                        f"{path}.machine_spec",
                        f'Accelerator "{accelerator}" is not supported for machine type '
                        f'"{machine_type}".',
                    )
                )
    if machine_type.startswith(TPU_VM_PREFIXES) and not machine.get("tpuTopology"):
        errors.append(
            (
                f"{path}.machine_spec.tpu_topology",
                f'TPU topology is required for machine type "{machine_type}".',
            )
        )
    container, package = pool.get("containerSpec"), pool.get("pythonPackageSpec")
    if container is None and package is None:
        errors.append((f"{path}.container_spec", "Required field is not set."))
    elif container is not None and package is not None:
        errors.append((path, "Only one of container_spec and python_package_spec may be set."))
    elif container is not None:
        if not container.get("imageUri"):
            errors.append((f"{path}.container_spec.image_uri", "Required field is not set."))
        errors.extend(_validate_env(container.get("env", []), f"{path}.container_spec.env"))
    elif package is not None:
        for key, proto in (
            ("executorImageUri", "executor_image_uri"),
            ("packageUris", "package_uris"),
            ("pythonModule", "python_module"),
        ):
            if not package.get(key):
                errors.append((f"{path}.python_package_spec.{proto}", "Required field is not set."))
        errors.extend(_validate_env(package.get("env", []), f"{path}.python_package_spec.env"))
    return errors


def _validate_env(env: list[dict[str, str]], path: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    if len(env) > 100:
        errors.append((path, "At most 100 environment variables are allowed."))
    for i, var in enumerate(env):
        if not var.get("name"):
            errors.append((f"{path}[{i}].name", "Required field is not set."))
    return errors


def _validate_labels(labels: dict[str, str]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    if len(labels) > MAX_LABELS:
        errors.append(("custom_job.labels", f"At most {MAX_LABELS} labels are allowed."))
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or len(key.encode()) >= 128:
            errors.append(
                (
                    f"custom_job.labels[{key}]",
                    f'Label key "{key}" is invalid: keys must start with a lowercase letter and '
                    "contain only lowercase letters, digits, '_' and '-' (at most 63 characters).",
                )
            )
        if not LABEL_VALUE.match(value) or len(value.encode()) >= 128:
            errors.append(
                (
                    f"custom_job.labels[{key}]",
                    f'Label value "{value}" is invalid: values may contain only lowercase letters, '
                    "digits, '_' and '-' (at most 63 characters).",
                )
            )
    return errors


def violations_message(violations: list[tuple[str, str]]) -> str:
    """Vertex's own rendering of several field errors in one message."""
    parts = [f"{i}.Field: {path}; Message: {msg}" for i, (path, msg) in enumerate(violations, 1)]
    return "List of found errors:\t" + "\t".join(parts) + "\t"


def bad_request_detail(violations: list[tuple[str, str]]) -> dict[str, Any]:
    """A google.rpc.BadRequest detail listing the violations."""
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": path, "description": msg} for path, msg in violations],
    }
