"""``caliban cluster job submit``: a sweep as Kubernetes Jobs, on GKE or any cluster.

Same order of work as ``caliban cloud``, so bad input costs nothing: flags,
specs, labels, experiments and the kubeconfig are checked first (no network, no
store; exit 2). ``--dry_run`` prints the manifests and ``--export`` writes them,
both without connecting. Then the cluster is reached (one request, so an
unreachable cluster fails before a long build), the image is built and pushed,
every job is recorded PLANNED with its manifest and the address of its cluster,
and the jobs are created: one Job each through the fan-out engine, or one
Indexed Job for the sweep. Re-running the same command with the same
``--xgroup`` (or ``caliban resubmit``) creates exactly what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import yaml

from caliban.adapters.cloud import registry
from caliban.adapters.store import PlanItem, Planned
from caliban.core import accelerators, experiment, labels, names
from caliban.errors import BackendError, OutcomeUnknown, ValidationError
from caliban.events import Document, JobsPlanned, JobStateChanged, Notice
from caliban.options import ClusterJobRequest, ClusterOptions
from caliban.platforms.kubernetes import gkespec
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes import versions as k8sversions
from caliban.platforms.kubernetes.admin import resolve_target, uses_kubeconfig
from caliban.platforms.kubernetes.jobs import (
    KubeSubmitter,
    indexed_groups,
    name_of,
    submit_indexed,
    target_of,
)
from caliban.platforms.kubernetes.spec import ClusterTarget, JobShape, Placement
from caliban.spec import JobMode, JobRecord, JobState, Platform
from caliban.sweep.fanout import Pacing, submit_all

if TYPE_CHECKING:
    from caliban.session import Prepared, RunResult, Session

_INDEXED_KEYS = ("indexed_job", "completion_index", "entry", "parallelism", "console_url")


@dataclass(frozen=True)
class ClusterPlan:
    """A checked submission: everything but the image."""

    target: ClusterTarget
    placement: Placement
    prefix: str
    user_labels: dict[str, str]
    entry: tuple[str, ...]


def placement_for(req: ClusterJobRequest, mode: JobMode, cluster_type: str) -> Placement:
    gpu = accelerators.parse_gpu_spec(req.gpu_spec, check_count=False) if req.gpu_spec else None
    tpu = accelerators.parse_tpu_spec(req.tpu_spec, check_count=False) if req.tpu_spec else None
    if mode is JobMode.CPU and gpu is not None:
        raise ValidationError("--nogpu cannot be combined with --gpu_spec")
    if mode is JobMode.GPU and gpu is None and tpu is None:
        gpu = accelerators.DEFAULT_GPU
    placement = Placement(
        cluster_type=cluster_type,
        gpu=gpu,
        tpu=tpu,
        spot=req.spot,
        preemptible=req.preemptible,
        min_cpu=req.min_cpu,
        min_mem=req.min_mem,
        node_selector=dict(req.node_selector),
    )
    placement.check()
    return placement


async def check(session: Session, req: ClusterJobRequest, prepared: Prepared) -> ClusterPlan:
    """Validate a submission; reads the kubeconfig but contacts no cluster."""
    if req.max_parallel is not None and not req.indexed:
        raise ValidationError("--max_parallel applies to --indexed submissions only")
    if req.max_parallel is not None and req.max_parallel < 1:
        raise ValidationError("--max_parallel must be at least 1")
    if req.max_inflight < 1 or (req.rate_limit is not None and req.rate_limit <= 0):
        raise ValidationError("--max_inflight and --rate_limit must be positive")
    if req.export and Path(req.export).suffix.lower() not in (".yaml", ".yml", ".json"):
        raise ValidationError(f"--export {req.export}: the file must end in .yaml or .json")
    entry: tuple[str, ...] = prepared.spec.entry.command if prepared.spec.entry else ()
    if not entry and req.image_tag is None:
        raise ValidationError("caliban cluster job submit needs a script or module to run")
    if req.indexed and not entry:
        raise ValidationError("--indexed needs the script or module the image runs")
    if req.xgroup is not None:
        names.check_xgroup(req.xgroup)
    if req.image_tag is not None:
        names.check_image_ref(req.image_tag, "--image_tag")
    # Everything local is checked before the cluster is looked up, so a bad flag
    # is not hidden behind a credentials error.
    kubeconfig = uses_kubeconfig(req.cluster, session.environ, session.user_config)
    cluster_type = req.cluster_type or ("generic" if kubeconfig else "gke")
    placement = placement_for(req, prepared.mode, cluster_type)
    shape = JobShape(
        image="-", placement=placement, backoff_limit=req.backoff_limit, ttl_seconds=req.ttl_seconds
    )
    shape.check()
    user_labels = dict(labels.parse_label_flag(f"{k}={v}") for k, v in req.labels)
    prefix = names.dns1123_name(req.name or f"caliban-{session.user.name}")
    if (req.dry_run or req.export) and not kubeconfig:
        target = _offline_target(req.cluster, session)
    else:
        target = await resolve_target(session, req.cluster)
    registry_prefix = session.text_setting("image_registry", req.image_registry)
    if (
        target.kind == "kubeconfig"
        and not registry_prefix
        and not req.image_tag
        and not (req.dry_run or req.export)
    ):
        raise ValidationError(
            "a cluster reached through a kubeconfig needs an image registry it can pull from",
            hint="pass --image_registry HOST/PATH (or set $CALIBAN_IMAGE_REGISTRY or "
            "image_registry in the user file), or "
            "--image_tag IMAGE",
        )
    return ClusterPlan(target, placement, prefix, user_labels, entry)


def _offline_target(opts: ClusterOptions, session: Session) -> ClusterTarget:
    """The GKE cluster as far as the flags name it: a dry run or an export writes
    manifests, and needs neither credentials nor the GKE API to do so."""
    if opts.cluster_name:
        gkespec.check_cluster_name(opts.cluster_name)
    return ClusterTarget(
        kind="gke",
        project=session.text_setting("gcloud.project_id", opts.project_id) or "<project>",
        location=gkespec.parse_location(opts.zone).name if opts.zone else "<location>",
        cluster=opts.cluster_name or "<cluster>",
        namespace=opts.namespace or "default",
    )


Row = tuple[int, dict[str, object], str, tuple[str, ...], dict[str, Any]]


def _manifests(
    plan: ClusterPlan,
    req: ClusterJobRequest,
    *,
    image: str,
    xgroup: str,
    store_id: str | None,
    config: experiment.Config,
    new_id: Callable[[], str] | None = None,
) -> list[Row]:
    """(index, experiment, job id, argv, manifest) for every experiment."""
    shape = JobShape(
        image=image,
        placement=plan.placement,
        xgroup=xgroup,
        backoff_limit=req.backoff_limit,
        ttl_seconds=req.ttl_seconds,
    )
    out: list[Row] = []
    for index, exp in enumerate(experiment.expand(config)):
        job_id = (new_id or names.new_job_id)()
        argv = tuple(experiment.to_argv(exp, req.script_args))
        job_labels = k8sspec.labels_for(
            user=plan.user_labels, xgroup=xgroup, store_id=store_id, job_id=job_id
        )
        manifest = k8sspec.job_manifest(
            shape,
            name=k8sspec.job_name(plan.prefix, job_id),
            job_id=job_id,
            args=argv,
            labels=job_labels,
        )
        out.append((index, dict(exp), job_id, argv, manifest))
    return out


def _indexed_pair(
    plan: ClusterPlan, req: ClusterJobRequest, rows: Sequence[Row]
) -> tuple[dict[str, Any], dict[str, Any]]:
    first_id = rows[0][2]
    name = k8sspec.job_name(plan.prefix, first_id, reserve=k8sspec.index_reserve(len(rows)))
    job = k8sspec.indexed_manifest(
        rows[0][4],
        name=name,
        first_job_id=first_id,
        completions=len(rows),
        parallelism=req.max_parallel,
        entry_command=plan.entry,
    )
    entries = [k8sspec.IndexEntry(r[2], r[3]) for r in rows]
    return k8sspec.configmap(name, entries, job["metadata"]["labels"]), job


def _dump(obj: object, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(obj, indent=2) + "\n"
    return yaml.safe_dump(obj, sort_keys=False)


async def _export(req: ClusterJobRequest, objects: list[list[dict[str, Any]]]) -> list[Path]:
    """One file per Job (``FILE``, or ``FILE_0.ext``, ``FILE_1.ext``... for several, as
    the original did); an Indexed Job shares its file with its ConfigMap."""
    assert req.export is not None
    path = Path(req.export)
    suffix = path.suffix.lower()
    paths = (
        [path]
        if len(objects) == 1
        else [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(objects))]
    )
    for target, group in zip(paths, objects, strict=True):
        if len(group) == 1:
            text = _dump(group[0], suffix)
        elif suffix == ".json":
            text = _dump({"apiVersion": "v1", "kind": "List", "items": group}, suffix)
        else:
            text = "---\n".join(_dump(o, suffix) for o in group)
        await anyio.Path(target).write_text(text, encoding="utf-8")
    return paths


async def submit(session: Session, req: ClusterJobRequest) -> RunResult:
    from caliban.session import RunResult

    prepared = await session.prepare(req.project, gpu_spec=req.gpu_spec, tpu_spec=req.tpu_spec)
    config = experiment.validate(req.experiments if req.experiments is not None else {})
    total = experiment.check_size(config, req.max_sweep)
    plan = await check(session, req, prepared)
    xgroup = req.xgroup or names.default_xgroup_name(session.user.name, datetime.now())

    if req.dry_run or req.export:
        image = req.image_tag or f"<{prepared.repo} pushed by digest>"
        rows = _manifests(plan, req, image=image, xgroup=xgroup, store_id=None, config=config)
        groups = [list(_indexed_pair(plan, req, rows))] if req.indexed else [[r[4]] for r in rows]
        if req.export:
            for path in await _export(req, groups):
                session.sink(Notice(f"wrote {path}"))
        else:
            # One YAML stream, a document per object, as `kubectl apply -f -` reads it.
            documents = []
            for objects in groups:
                for obj in objects:
                    documents.append(yaml.safe_dump(obj, sort_keys=False, explicit_start=True))
                    await anyio.lowlevel.checkpoint()  # Ctrl-C gets through a long listing
            session.sink(Document("".join(documents)))
            session.sink(
                Notice(
                    f"dry run: {total} job(s) in {xgroup} for {plan.target.display}, "
                    f"namespace {plan.target.namespace}; nothing was built, pushed, "
                    "submitted or recorded",
                    level="status",
                )
            )
        return RunResult(xgroup, dry_run=True, platform=Platform.GKE)

    kube = await (await session.kube()).client(plan.target)
    await kube.check(plan.target.namespace)
    await _check_version(session, plan, req)
    if plan.target.kind == "gke" and plan.placement.gpu is not None and not req.force:
        await _check_gpu_limits(session, plan)
    if not req.image_tag:
        # A key in the build context: refused before the store is even created.
        await session.check_push(prepared, key_file=plan.target.cloud_key or req.cluster.cloud_key)
    await session.check_store()  # before a long build, not after
    image = req.image_tag or await _build_and_push(session, req, prepared, plan)

    store = await session.store()
    user = session.user.name
    xgroup_id = await store.xgroup(xgroup, user)
    digest = image.rsplit("@", 1)[-1]
    spec_id = await store.container_spec(
        _spec_key(plan, req, image),
        image,
        {**prepared.record(image, digest), "platform": "gke"},
        user,
    )
    rows = _manifests(plan, req, image=image, xgroup=xgroup, store_id=store.store_id, config=config)
    group_name = (
        k8sspec.job_name(plan.prefix, rows[0][2], reserve=k8sspec.index_reserve(len(rows)))
        if req.indexed and rows
        else None
    )

    def items() -> Any:
        for index, exp, job_id, argv, manifest in rows:
            details: dict[str, object] = {
                "cluster": plan.target.to_details(),
                "k8s_job": manifest["metadata"]["name"],
                "mode": prepared.mode.value,
            }
            if group_name is not None:
                details.update(
                    indexed_job=group_name,
                    completion_index=index,
                    entry=list(plan.entry),
                    parallelism=req.max_parallel,
                )
            yield PlanItem(
                index=index,
                args=argv,
                kwargs=exp,
                job_id=job_id,
                image=image,
                spec=manifest,
                details=details,
            )

    planned = await store.plan(
        xgroup_id=xgroup_id,
        container_spec_id=spec_id,
        platform=Platform.GKE,
        user=user,
        items=items(),
    )
    to_send = sum(1 for p in planned if p.action in ("new", "reconcile"))
    session.sink(JobsPlanned(xgroup, total, to_send, len(planned) - to_send))
    jobs = await submit_planned(session, planned, pacing=_pacing(req), total=total)
    return RunResult(xgroup, jobs, len(planned) - to_send, platform=Platform.GKE)


async def _check_version(session: Session, plan: ClusterPlan, req: ClusterJobRequest) -> None:
    """Refuse, before anything is built, Jobs using a field the server would drop."""
    probe = _manifests(
        plan,
        req,
        image="-",
        xgroup="-",
        store_id=None,
        config=experiment.validate({}),
        new_id=lambda: "0" * 26,  # no real id spent on a probe
    )
    objects = list(_indexed_pair(plan, req, probe)) if req.indexed else [probe[0][4]]
    kube = await (await session.kube()).client(plan.target)
    warning = k8sversions.check_server(
        await kube.server_version(), objects, where=plan.target.display
    )
    if warning:
        session.sink(Notice(warning, level="warning"))


def _spec_key(plan: ClusterPlan, req: ClusterJobRequest, image: str) -> str:
    """What makes two submissions "the same jobs": a re-run with the same image,
    cluster and resources resumes; changing any of them makes new jobs."""
    import hashlib

    shape = json.dumps(
        [
            plan.target.key,
            plan.target.namespace,
            repr(plan.placement),
            req.backoff_limit,
            req.ttl_seconds,
            req.indexed,
            plan.prefix,
            sorted(plan.user_labels.items()),
        ],
        sort_keys=True,
        default=str,
    )
    return f"gke:{image}:{hashlib.sha256(shape.encode()).hexdigest()[:16]}"


def _pacing(req: ClusterJobRequest) -> Pacing:
    # No client-side rate unless asked: the API server throttles with 429 +
    # Retry-After (API Priority and Fairness), which pauses the whole bucket.
    return Pacing(rate_per_minute=req.rate_limit or 1e9, max_inflight=req.max_inflight)


async def _check_gpu_limits(session: Session, plan: ClusterPlan) -> None:
    """On an auto-provisioning GKE cluster, the GPU type must be within its limits."""
    from caliban.platforms.kubernetes.admin import gke

    target = plan.target
    assert plan.placement.gpu is not None and target.project and target.location
    api, _ = await gke(session, _options_of(target))
    cluster = await api.cluster(target.project, target.location, str(target.cluster))
    autoscaling = cluster.get("autoscaling") or {}
    if not autoscaling.get("enableNodeAutoprovisioning"):
        return
    limits = gkespec.limits_of(cluster)
    label = accelerators.gke_accelerator_label(plan.placement.gpu)
    if not gkespec.gpu_fits_limits(label, plan.placement.gpu.count, limits):
        usable = ", ".join(f"{v}x{k}" for k, v in sorted(limits.items()) if k.startswith("nvidia"))
        raise ValidationError(
            f"cluster {target.cluster} cannot provision nodes with {plan.placement.gpu} "
            f"({label}); its GPU limits: {usable or 'none'}",
            hint="use another --gpu_spec, raise the cluster's limits, or pass --force",
        )


def _options_of(target: ClusterTarget) -> Any:
    from caliban.options import ClusterOptions

    return ClusterOptions(
        cluster_name=target.cluster,
        zone=target.location,
        project_id=target.project,
        cloud_key=target.cloud_key,
        gke_endpoint=target.endpoint,
    )


async def _build_and_push(
    session: Session, req: ClusterJobRequest, prepared: Prepared, plan: ClusterPlan
) -> str:
    built = await session.build_prepared(prepared, no_cache=req.project.no_cache)
    tag = built.tag.split(":")[-1]
    prefix = session.text_setting("image_registry", req.image_registry)
    target = plan.target
    if prefix:
        where = registry.custom_registry(prefix, prepared.repo, tag)
    else:
        assert target.project and target.location
        where = registry.artifact_registry(
            gkespec.Location(target.location).region,
            target.project,
            req.artifact_repo,
            prepared.repo,
            tag,
        )
    creds = None
    if where.is_google:
        creds = await session.credentials(target.cloud_key or req.cluster.cloud_key)
    return await registry.push(
        await session.docker(),
        await session.http(),
        image=built.tag,
        target=where,
        credentials=creds,
        sink=session.sink,
    )


async def submit_planned(
    session: Session, planned: Sequence[Planned], *, pacing: Pacing, total: int
) -> list[JobRecord]:
    """Create every ``new``/``reconcile`` job: Indexed groups with one call each, the
    others through the fan-out engine."""
    store = await session.store()
    connections = await session.kube()
    todo = [p for p in planned if p.action in ("new", "reconcile")]
    plain = [p for p in todo if not p.job.details.get("indexed_job")]
    grouped = [p for p in todo if p.job.details.get("indexed_job")]
    if plain:
        await submit_all(
            plain,
            KubeSubmitter(connections),
            store=store,
            sink=session.sink,
            pacing=pacing,
            total=total,
        )
    reconcile = {p.job.job_id for p in grouped if p.action == "reconcile"}
    for name, group in indexed_groups([p.job for p in grouped]).items():
        parallelism = group[0].details.get("parallelism")
        try:
            kube = await connections.client(target_of(group[0]))
            await submit_indexed(
                kube,
                group,
                parallelism=int(str(parallelism)) if parallelism else None,
                reconcile=any(j.job_id in reconcile for j in group),
                store=store,
                sink=session.sink,
                total=total,
                policy=pacing.policy,
            )
        except BackendError as exc:
            await _indexed_failed(session, name, group, exc)
    return await store.jobs(job_ids=[p.job.job_id for p in planned])


async def _indexed_failed(
    session: Session, name: str, group: Sequence[JobRecord], exc: BackendError
) -> None:
    if isinstance(exc, OutcomeUnknown) or exc.retryable:
        # It may exist: stay PLANNED, so the next status or re-run looks it up.
        session.sink(
            Notice(
                f"Indexed Job {name}: outcome unknown ({exc.message}); it will be looked up again",
                level="warning",
            )
        )
        return
    store = await session.store()
    await store.transitions(
        [(j.job_id, JobState.FAILED, None, exc.message, None, None) for j in group]
    )
    for job in group:
        session.sink(
            JobStateChanged(
                job.job_id, f"{job.index + 1}", JobState.FAILED, detail=exc.message, argv=job.args
            )
        )


async def resubmit(
    session: Session, jobs: Sequence[JobRecord], *, max_inflight: int = 64
) -> list[JobRecord]:
    """Failed/stopped jobs become new Jobs with the recorded manifest (renamed for the
    new job id, on the cluster they ran on); PLANNED ones are looked up and only
    created if missing. An experiment of an Indexed sweep comes back as a Job of
    its own."""
    store = await session.store()
    fresh = [j for j in jobs if j.state.terminal]
    items: list[tuple[JobRecord, PlanItem]] = []
    for old in fresh:
        new_id = names.new_job_id()
        manifest = k8sspec.rebind(old.spec, prefix=k8sspec.name_prefix(old.spec), job_id=new_id)
        details = {k: v for k, v in old.details.items() if k not in _INDEXED_KEYS}
        details["k8s_job"] = manifest["metadata"]["name"]
        items.append((old, PlanItem.again(old, job_id=new_id, spec=manifest, details=details)))
    again = await store.add_jobs(items, user=session.user.name)
    planned = [Planned("new", j) for j in again]
    planned += [Planned("reconcile", j) for j in jobs if not j.state.terminal]
    for target in {target_of(p.job).display for p in planned}:
        session.sink(Notice(f"resubmitting to {target}"))
    return await submit_planned(
        session,
        planned,
        pacing=Pacing(rate_per_minute=1e9, max_inflight=max_inflight),
        total=len(planned),
    )


def describe(job: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """NAMESPACE/NAME, STATE, COMPLETIONS, AGE-ish start time of a Job (for ``job ls``)."""
    meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
    state, _ = k8sspec.job_state(job)
    completions = f"{status.get('succeeded', 0)}/{spec.get('completions', 1)}"
    return (
        f"{meta.get('namespace', '')}/{meta['name']}",
        state.value,
        completions,
        str(status.get("startTime") or meta.get("creationTimestamp") or ""),
    )


__all__ = ["describe", "name_of", "resubmit", "submit", "submit_planned"]
