"""``caliban cloud``: build, push, and fan a sweep out to Vertex AI custom jobs.

Order of work, so that bad input costs nothing: every flag, spec, label and
experiment is checked first (no network, no store); ``--dry_run`` stops there
and prints each request body. Then the image is built and pushed once, every
job is recorded PLANNED with its full request body, and the fan-out engine
submits them. Re-running the same command with the same ``--xgroup`` (or
``caliban resubmit``) submits exactly what is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from caliban.adapters.cloud import registry
from caliban.adapters.cloud.auth import _read_key, default_key_file
from caliban.adapters.cloud.http import GoogleApi
from caliban.adapters.store import PlanItem, Planned, Store
from caliban.core import accelerators, experiment, labels, names, settings
from caliban.core.config import CalibanConfig
from caliban.core.userconfig import UserConfig
from caliban.errors import AuthError, BackendError, ValidationError
from caliban.events import Document, JobsPlanned, JobStateChanged, Notice, Sink
from caliban.limits import RetryPolicy, with_retries
from caliban.options import CloudRequest
from caliban.platforms.vertex import spec as vertexspec
from caliban.spec import JobMode, JobRecord, Platform
from caliban.sweep.fanout import Pacing, job_label, submit_all

if TYPE_CHECKING:
    from caliban.platforms.vertex.client import VertexSubmitter
    from caliban.session import RunResult, Session

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


def _absolute_key(
    req: CloudRequest,
    environ: Mapping[str, str],
    config: CalibanConfig,
    user_config: UserConfig | None = None,
) -> str | None:
    """The key file as an absolute path: it is recorded with every job, and
    ``caliban status`` may run from another folder. A relative
    ``gcloud.cloud_key`` in .calibanconfig.json is relative to the project."""
    key = default_key_file(req.cloud_key, environ, None)
    base = Path.cwd()
    if key is None and config.gcloud.cloud_key:
        key, base = config.gcloud.cloud_key, req.project.folder
    if key is None and user_config is not None:
        # Already absolute: relative names are anchored at the user file.
        user_key = user_config.values.get("gcloud.cloud_key")
        key = str(user_key) if user_key else None
    if key is None:
        return None
    path = Path(key).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


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
    key_file = _absolute_key(req, environ, config, user_config)
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
        spot=req.spot,
        timeout_s=req.timeout_s,
        tpu_topology=plan.tpu_topology,
    )


async def submit(session: Session, req: CloudRequest) -> RunResult:
    from caliban.session import RunResult

    prepared = await session.prepare(req.project, gpu_spec=req.gpu_spec, tpu_spec=req.tpu_spec)
    if prepared.spec.entry is None and req.image_tag is None:
        raise ValidationError("caliban cloud needs a script or module to run")
    plan = check(
        req,
        mode=prepared.mode,
        config=prepared.config,
        user=session.user.name,
        environ=session.environ,
        user_config=session.user_config,
    )
    config = experiment.validate(req.experiments if req.experiments is not None else {})
    total = experiment.check_size(config, req.max_sweep)
    xgroup = req.xgroup or names.default_xgroup_name(session.user.name, datetime.now())

    if req.dry_run:
        image = req.image_tag or f"<{prepared.repo} pushed by digest>"
        requests = []
        for index, exp in enumerate(experiment.expand(config)):
            argv = experiment.to_argv(exp, req.script_args)
            region = plan.regions[index % len(plan.regions)]
            body = _body(
                plan,
                req,
                index=index,
                job_id="<job id>",
                store_id="<store>",
                xgroup=xgroup,
                image=image,
                argv=argv,
            )
            requests.append(
                {"parent": f"projects/{plan.project_id}/locations/{region}", "customJob": body}
            )
            await anyio.lowlevel.checkpoint()  # Ctrl-C gets through a long listing
        # One JSON array, one element per job, so the output can be piped to jq.
        session.sink(Document(json.dumps(requests, indent=2)))
        session.sink(
            Notice(
                f"dry run: {total} Vertex job(s) in {xgroup}; nothing was built, "
                "pushed, submitted or recorded",
                level="status",
            )
        )
        return RunResult(xgroup, dry_run=True, platform=Platform.VERTEX)

    creds = await session.credentials(plan.key_file)
    await creds.token()  # bad credentials: one clear error before anything is built or recorded
    if not req.image_tag:
        # A key in the build context: refused before the store is even created.
        await session.check_push(prepared, key_file=plan.key_file)
    await session.check_store()  # and an unwritable history too
    # The image each region's jobs pull: every region can reach its own registry.
    images: dict[str, str]
    if req.image_tag:
        image, digest = req.image_tag, req.image_tag
        images = dict.fromkeys(plan.regions, image)
    else:
        built = await session.build_prepared(prepared, no_cache=req.project.no_cache)
        targets = registry.region_targets(
            plan.regions,
            prefix=session.text_setting("image_registry", req.image_registry),
            project=plan.project_id,
            repository=req.artifact_repo,
            image=prepared.repo,
            tag=built.tag.split(":")[-1],
        )
        pushed: dict[registry.Target, str] = {}
        for target in targets.values():
            if target not in pushed:
                pushed[target] = await registry.push(
                    await session.docker(),
                    await session.http(),
                    image=built.tag,
                    target=target,
                    credentials=creds,
                    sink=session.sink,
                )
        images = {region: pushed[target] for region, target in targets.items()}
        image, digest = images[plan.regions[0]], built.digest

    store = await session.store()
    user = session.user.name
    xgroup_id = await store.xgroup(xgroup, user)
    record = {**prepared.record(image, digest), "platform": "vertex"}
    if len(set(images.values())) > 1:
        record["images"] = images
    spec_id = await store.container_spec(f"vertex:{image}", image, record, user)

    def items() -> Any:
        for index, exp in enumerate(experiment.expand(config)):
            job_id = names.new_job_id()
            argv = experiment.to_argv(exp, req.script_args)
            region = plan.regions[index % len(plan.regions)]
            body = _body(
                plan,
                req,
                index=index,
                job_id=job_id,
                store_id=store.store_id,
                xgroup=xgroup,
                image=images[region],
                argv=argv,
            )
            details: dict[str, object] = {
                "project": plan.project_id,
                "region": region,
                "mode": plan.mode.value,
                # resubmit paces itself as this submission did
                "rate_limit": req.rate_limit,
                "max_inflight": req.max_inflight,
            }
            if plan.endpoint:
                details["endpoint"] = plan.endpoint
            if plan.key_file:
                details["cloud_key"] = plan.key_file
            yield PlanItem(
                index=index,
                args=tuple(argv),
                kwargs=dict(exp),
                job_id=job_id,
                image=images[region],
                spec=body,
                details=details,
            )

    planned = await store.plan(
        xgroup_id=xgroup_id,
        container_spec_id=spec_id,
        platform=Platform.VERTEX,
        user=user,
        items=items(),
    )
    to_send = sum(1 for p in planned if p.action in ("new", "reconcile"))
    session.sink(JobsPlanned(xgroup, total, to_send, len(planned) - to_send, remote=True))
    jobs = await submit_jobs(
        session,
        planned,
        creds_key=plan.key_file,
        endpoint=plan.endpoint,
        rate=req.rate_limit,
        max_inflight=req.max_inflight,
        total=total,
    )
    return RunResult(xgroup, jobs, len(planned) - to_send, platform=Platform.VERTEX)


async def submit_jobs(
    session: Session,
    planned: Sequence[Any],
    *,
    creds_key: str | None,
    endpoint: str | None,
    rate: float,
    max_inflight: int,
    total: int,
) -> list[JobRecord]:
    from caliban.platforms.vertex.client import VertexClient, VertexSubmitter

    api = GoogleApi(
        await session.http(), await session.credentials(creds_key), timeout=REQUEST_TIMEOUT
    )
    submitter = VertexSubmitter(VertexClient(api, endpoint))
    store = await session.store()
    planned = await _adopt(planned, submitter, store, session.sink, total)
    pacing = Pacing(rate_per_minute=rate, max_inflight=max_inflight, policy=RETRY_POLICY)
    return await submit_all(
        planned, submitter, store=store, sink=session.sink, pacing=pacing, total=total
    )


async def _adopt(
    planned: Sequence[Planned], submitter: VertexSubmitter, store: Store, sink: Sink, total: int
) -> list[Planned]:
    """Settle the jobs an earlier run left PLANNED with one list call per region:
    those that exist are adopted, the others are sent as new. If the list
    fails, the engine looks each one up before sending it instead."""
    unsure = [p.job for p in planned if p.action == "reconcile"]
    if not unsure:
        return list(planned)
    try:
        found = await with_retries(partial(submitter.find_many, unsure), _LOOKUP_POLICY)
    except AuthError:
        raise
    except BackendError:
        return list(planned)
    out: list[Planned] = []
    for p in planned:
        accepted = found.get(p.job.job_id)
        if p.action != "reconcile":
            out.append(p)
        elif accepted is None:
            out.append(Planned("new", p.job))
        else:
            await store.transition(
                p.job.job_id,
                accepted.state,
                platform_id=accepted.platform_id,
                details=accepted.details,
            )
            sink(
                JobStateChanged(
                    p.job.job_id,
                    job_label(p.job, total),
                    accepted.state,
                    detail=accepted.url or accepted.platform_id,
                    argv=p.job.args,
                )
            )
            out.append(Planned("active", p.job))
    return out


def rebind(body: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    """A recorded CustomJob body, re-addressed to a new caliban job id."""
    new = json.loads(json.dumps(body))
    new.setdefault("labels", {})[vertexspec.JOB_ID_LABEL] = job_id
    for pool in new.get("jobSpec", {}).get("workerPoolSpecs", []):
        for var in pool.get("containerSpec", {}).get("env", []):
            if var.get("name") == vertexspec.JOB_ID_ENV:
                var["value"] = job_id
    return dict(new)


async def resubmit(
    session: Session,
    jobs: Sequence[JobRecord],
    *,
    rate: float | None = None,
    max_inflight: int | None = None,
) -> list[JobRecord]:
    """Send again failed/stopped Vertex jobs (as new jobs with the recorded body), and
    look up PLANNED ones whose submission was interrupted (sending only the missing)."""
    store = await session.store()
    fresh = [j for j in jobs if j.state.terminal]
    again = await store.add_jobs(
        [
            (
                old,
                PlanItem.again(
                    old,
                    job_id=(new_id := names.new_job_id()),
                    spec=rebind(old.spec, new_id),
                    details={k: v for k, v in old.details.items() if k != "console_url"},
                ),
            )
            for old in fresh
        ],
        user=session.user.name,
    )
    planned = [Planned("new", j) for j in again]
    planned += [Planned("reconcile", j) for j in jobs if not j.state.terminal]
    if planned:
        session.sink(JobsPlanned(planned[0].job.xgroup, len(planned), len(planned), 0, remote=True))
    out: list[JobRecord] = []
    groups: dict[tuple[str | None, str | None], list[Planned]] = {}
    for p in planned:
        key = (_opt(p.job.details.get("cloud_key")), _opt(p.job.details.get("endpoint")))
        groups.setdefault(key, []).append(p)
    for (key_file, endpoint), group in groups.items():
        out += await submit_jobs(
            session,
            group,
            creds_key=session.cloud_key or key_file,
            endpoint=endpoint,
            rate=rate or min(_number(p.job.details.get("rate_limit"), 60.0) for p in group),
            max_inflight=max_inflight
            or int(min(_number(p.job.details.get("max_inflight"), 16) for p in group)),
            total=len(planned),
        )
    return out


def _number(value: object, default: float) -> float:
    try:
        number = float(str(value))
    except ValueError:
        return default
    return number if number > 0 else default


def _opt(value: object) -> str | None:
    return str(value) if value else None
