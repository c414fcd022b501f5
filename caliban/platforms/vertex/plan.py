"""Planning a ``caliban cloud`` sweep: the request checked without touching the
network (:func:`check`), and the CustomJob body of each job (:func:`body`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from caliban.adapters.cloud.auth import _read_key
from caliban.core import accelerators, labels, names, settings
from caliban.core.config import CalibanConfig
from caliban.core.userconfig import UserConfig
from caliban.errors import ValidationError
from caliban.limits import RetryPolicy
from caliban.options import CloudRequest
from caliban.platforms.vertex import scheduling as vertexsched
from caliban.platforms.vertex import spec as vertexspec
from caliban.spec import JobMode

DEFAULT_REGION = "us-central1"
_LOOKUP_POLICY = RetryPolicy(attempts=4, initial=0.5, max_delay=8, deadline=60)
# How creates are retried, and how long one request may take before its outcome
# counts as unknown (and the job is looked up before anything is sent again).
RETRY_POLICY = RetryPolicy()
REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class CloudPlan:
    """A checked ``caliban cloud`` request: everything but the image digest."""

    project_id: str
    regions: tuple[str, ...]
    mode: JobMode
    machine_type: str
    accelerator: accelerators.AcceleratorSpec | None
    gpu: accelerators.AcceleratorSpec | None
    tpu: accelerators.AcceleratorSpec | None
    name: str
    user_labels: dict[str, str]
    key_file: str | None
    endpoint: str | None
    tpu_topology: str | None = None
    placement: vertexsched.Scheduling = field(default_factory=vertexsched.Scheduling)
    #: ``--capacity``: the rungs a job climbs when it finds no capacity (empty: no ladder).
    ladder: tuple[vertexsched.Rung, ...] = ()
    queue_timeout_s: int = 0


# How long a job of a ladder may wait for capacity before it is moved
# (``--queue_timeout``; docs/capacity.md).
DEFAULT_QUEUE_TIMEOUT_S = 30 * 60


def _placement(
    req: CloudRequest,
    *,
    project: str,
    regions: tuple[str, ...],
    machine: str,
    accelerator: accelerators.AcceleratorSpec | None,
) -> tuple[vertexsched.Scheduling, tuple[vertexsched.Rung, ...], int]:
    timeout = req.timeout
    if timeout is None and req.timeout_s:
        timeout = f"{int(req.timeout_s)}s"
    base = vertexsched.check(
        spot=req.spot,
        flex_start=req.flex_start,
        max_wait=req.max_wait,
        reservation=req.reservation,
        persistent_resource=req.persistent_resource,
        timeout=timeout,
        no_platform_retries=req.no_platform_retries,
        accelerator=accelerator,
        machine_type=machine,
        project=project,
        regions=regions,
        force=req.force,
    )
    if req.capacity is None:
        if req.queue_timeout is not None:
            raise ValidationError("--queue_timeout applies to a --capacity ladder; add --capacity")
        return base, (), 0
    chosen = [
        flag
        for flag, on in (
            ("--spot", req.spot),
            ("--flex_start", req.flex_start),
            ("--reservation", req.reservation is not None),
            ("--persistent_resource", req.persistent_resource is not None),
        )
        if on
    ]
    if chosen:
        raise ValidationError(
            f"--capacity chooses the placement of every rung; drop {chosen[0]} "
            "(or make it a rung, e.g. --capacity spot,standard)"
        )
    ladder = vertexsched.parse_ladder(req.capacity, project=project)
    for rung in ladder:
        # Each rung must be a placement the flags alone would accept.
        vertexsched.check(
            spot=rung.kind == "spot",
            flex_start=rung.kind == "flex",
            reservation=rung.reservation,
            accelerator=accelerator,
            machine_type=machine,
            project=project,
            force=req.force,
        )
        if rung.reservation is not None and not vertexsched.rung_regions(rung, regions):
            raise ValidationError(
                f"--capacity {rung}: the reservation's zone is in none of the regions "
                f"{', '.join(regions)}; add its region with --region"
            )
    wait = (
        vertexsched.parse_duration(req.queue_timeout, "--queue_timeout")
        if req.queue_timeout is not None
        else DEFAULT_QUEUE_TIMEOUT_S
    )
    if wait <= 0:
        raise ValidationError("--queue_timeout must be longer than 0s, e.g. --queue_timeout 30m")
    return ladder[0].scheduling(base), ladder, wait


def _regions(
    req: CloudRequest, environ: Mapping[str, str], user_config: UserConfig | None = None
) -> tuple[str, ...]:
    for part in req.regions:
        # `--region ""` (an unset shell variable) would silently mean us-central1.
        if not part.strip() or any(not r.strip() for r in part.split(",")):
            raise ValidationError(f"--region {part!r}: empty region name")
    configured = settings.resolve_one(
        settings.BY_NAME["gcloud.region"], environ=environ, user=user_config
    )
    raw = req.regions or (str(configured.value),)
    regions = tuple(dict.fromkeys(r.strip() for part in raw for r in part.split(",") if r.strip()))
    # Regions become part of the API's host name, whatever --force skips.
    return tuple(names.check_region(r) for r in regions) or (DEFAULT_REGION,)


def check(
    req: CloudRequest,
    *,
    mode: JobMode,
    config: CalibanConfig,
    user: str,
    environ: Mapping[str, str],
    user_config: UserConfig | None = None,
) -> CloudPlan:
    """Validate a cloud request without touching the network."""
    if req.xgroup is not None:
        names.check_xgroup(req.xgroup)
    if req.image_tag is not None:
        names.check_image_ref(req.image_tag, "--image_tag")
    if req.endpoint is not None:
        names.check_url(req.endpoint, "--api_endpoint")
    gpu = (
        accelerators.parse_gpu_spec(req.gpu_spec, check_count=not req.force)
        if req.gpu_spec
        else None
    )
    tpu = (
        accelerators.parse_tpu_spec(req.tpu_spec, check_count=not req.force)
        if req.tpu_spec
        else None
    )
    if mode is JobMode.GPU and gpu is None and tpu is None:
        gpu = accelerators.DEFAULT_GPU
    if mode is JobMode.CPU and gpu is not None:
        raise ValidationError("--nogpu cannot be combined with --gpu_spec")
    # A TPU-only job runs on its TPU host whatever the mode says.
    host_mode = JobMode.CPU if gpu is None and tpu is not None else mode
    machine = (
        accelerators.normalize_machine_type(req.machine_type)
        if req.machine_type
        else accelerators.default_machine_type(host_mode, gpu, tpu)
    )
    regions = _regions(req, environ, user_config)
    for region in regions:
        accelerators.validate_vertex(
            machine_type=machine, gpu=gpu, tpu=tpu, region=region, force=req.force
        )
    key_file = settings.key_file(
        req.cloud_key,
        environ,
        user=user_config,
        project_key=config.gcloud.cloud_key,
        project_folder=req.project.folder,
    )
    project = settings.resolve_one(
        settings.BY_NAME["gcloud.project_id"],
        flags={"gcloud.project_id": req.project_id},
        environ=environ,
        project=settings.project_values(config),
        user=user_config,
    ).value
    if not project and key_file:
        project = _read_key(key_file).get("project_id")
    if not project:
        raise ValidationError(
            "no Google Cloud project: pass --project_id, set $PROJECT_ID, or set "
            "gcloud.project_id in .calibanconfig.json or the user file"
        )
    names.check_project_id(str(project), "--project_id" if req.project_id else "project id")
    user_labels = dict(labels.parse_label_flag(f"{k}={v}") for k, v in req.labels)
    if tpu is not None and gpu is not None and req.gpu_spec:
        raise ValidationError("a Vertex job takes GPUs or TPUs, not both; drop one spec")
    accelerator = tpu if tpu is not None else gpu
    for rate, flag in ((req.rate_limit, "--rate_limit"), (req.max_inflight, "--max_inflight")):
        if not math.isfinite(rate):
            raise ValidationError(f"{flag} must be a finite number")
        if rate <= 0:
            raise ValidationError(f"{flag} must be positive")
    endpoint = req.endpoint or environ.get("CALIBAN_VERTEX_ENDPOINT") or None
    tpu_topology = accelerators.vertex_tpu_topology(machine, tpu)
    placement, ladder, queue_timeout_s = _placement(
        req, project=str(project), regions=regions, machine=machine, accelerator=accelerator
    )
    return CloudPlan(
        project_id=str(project),
        regions=regions,
        mode=mode,
        machine_type=machine,
        accelerator=accelerator,
        gpu=gpu,
        tpu=tpu,
        name=req.name or f"caliban_{user}",
        user_labels=user_labels,
        key_file=key_file,
        endpoint=endpoint,
        tpu_topology=tpu_topology,
        placement=placement,
        ladder=ladder,
        queue_timeout_s=queue_timeout_s,
    )


def _body(
    plan: CloudPlan,
    req: CloudRequest,
    *,
    index: int,
    job_id: str,
    store_id: str,
    xgroup: str,
    image: str,
    argv: Sequence[str],
    commit: str | None = None,
    placement: vertexsched.Scheduling | None = None,
) -> dict[str, Any]:
    job_labels = vertexspec.labels_for(
        job_id=job_id,
        store_id=store_id,
        xgroup=xgroup,
        gpu=plan.gpu,
        tpu=plan.tpu,
        name=plan.name,
        user_labels=plan.user_labels,
        args=argv,
        commit=commit,
    )
    return vertexspec.custom_job(
        display_name=names.vertex_display_name(plan.name, index + 1),
        image=image,
        args=argv,
        machine_type=plan.machine_type,
        accelerator=plan.accelerator,
        labels=job_labels,
        env=vertexspec.job_env(job_id=job_id, xgroup=xgroup),
        service_account=req.service_account,
        tpu_topology=plan.tpu_topology,
        placement=placement or plan.placement,
    )


def rebind(body: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    """A recorded CustomJob body, re-addressed to a new caliban job id."""
    new = json.loads(json.dumps(body))
    new.setdefault("labels", {})[vertexspec.JOB_ID_LABEL] = job_id
    for pool in new.get("jobSpec", {}).get("workerPoolSpecs", []):
        for var in pool.get("containerSpec", {}).get("env", []):
            if var.get("name") == vertexspec.JOB_ID_ENV:
                var["value"] = job_id
    return dict(new)


def _number(value: object, default: float) -> float:
    try:
        number = float(str(value))
    except ValueError:
        return default
    return number if number > 0 else default


def _opt(value: object) -> str | None:
    return str(value) if value else None
