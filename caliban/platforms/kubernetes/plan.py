"""Planning ``caliban cluster job submit``: flags, specs, labels and the kubeconfig
checked without contacting a cluster (exit 2 on bad input), the manifests of a
sweep, the cluster's version and GPU limits checked in one read each, and the
push of the image to a registry the cluster pulls from."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import yaml

from caliban.adapters.cloud import registry
from caliban.core import accelerators, experiment, labels, names
from caliban.errors import ValidationError
from caliban.events import Notice
from caliban.limits import Pacing
from caliban.options import ClusterJobRequest, ClusterOptions
from caliban.platforms.kubernetes import gkespec
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes import versions as k8sversions
from caliban.platforms.kubernetes.admin import resolve_target, uses_kubeconfig
from caliban.platforms.kubernetes.client import connections
from caliban.platforms.kubernetes.spec import ClusterTarget, JobShape, Placement
from caliban.spec import JobMode

if TYPE_CHECKING:
    from caliban.adapters.build import BuiltImage
    from caliban.platforms.base import Context, Prepared

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
        compute_class=req.compute_class,
    )
    placement.check()
    return placement


async def check(session: Context, req: ClusterJobRequest, prepared: Prepared) -> ClusterPlan:
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
        image="-",
        placement=placement,
        backoff_limit=req.backoff_limit,
        ttl_seconds=req.ttl_seconds,
        queue=req.queue,
        priority_class=req.priority_class,
    )
    shape.check()
    user_labels = dict(labels.parse_label_flag(f"{k}={v}") for k, v in req.labels)
    if any(k.startswith(k8sspec.KUEUE_PREFIX) for k in user_labels):
        # As a -l label it would reach the pods too, and the Job would not be suspended.
        raise ValidationError(
            f"Kueue labels ({k8sspec.KUEUE_PREFIX}...) are set by caliban",
            hint="pass --queue LOCALQUEUE [--priority_class NAME] instead of -l",
        )
    prefix = names.dns1123_name(req.name or f"caliban-{session.user_name}")
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


def _offline_target(opts: ClusterOptions, session: Context) -> ClusterTarget:
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
    shape = shape_of(plan, req, image=image, xgroup=xgroup)
    out: list[Row] = []
    for index, exp in enumerate(experiment.expand(config)):
        job_id = (new_id or names.new_job_id)()
        argv = tuple(experiment.to_argv(exp, req.script_args))
        manifest = manifest_for(
            plan, shape, xgroup=xgroup, store_id=store_id, job_id=job_id, argv=argv
        )
        out.append((index, dict(exp), job_id, argv, manifest))
    return out


def shape_of(plan: ClusterPlan, req: ClusterJobRequest, *, image: str, xgroup: str) -> JobShape:
    return JobShape(
        image=image,
        placement=plan.placement,
        xgroup=xgroup,
        backoff_limit=req.backoff_limit,
        ttl_seconds=req.ttl_seconds,
        queue=req.queue,
        priority_class=req.priority_class,
    )


def manifest_for(
    plan: ClusterPlan,
    shape: JobShape,
    *,
    xgroup: str,
    store_id: str | None,
    job_id: str,
    argv: Sequence[str],
    commit: str | None = None,
) -> dict[str, Any]:
    """The Job manifest of one experiment."""
    job_labels = k8sspec.labels_for(
        user=plan.user_labels, xgroup=xgroup, store_id=store_id, job_id=job_id, commit=commit
    )
    return k8sspec.job_manifest(
        shape,
        name=k8sspec.job_name(plan.prefix, job_id),
        job_id=job_id,
        args=tuple(argv),
        labels=job_labels,
    )


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


async def _check_version(session: Context, plan: ClusterPlan, req: ClusterJobRequest) -> None:
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
    kube = await (await connections(session)).client(plan.target)
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
            # Only when set, so keys of submissions without a queue stay as they were.
            *([req.queue, req.priority_class] if req.queue else []),
            *([plan.placement.compute_class] if plan.placement.compute_class else []),
        ],
        sort_keys=True,
        default=str,
    )
    return f"gke:{image}:{hashlib.sha256(shape.encode()).hexdigest()[:16]}"


def _pacing(req: ClusterJobRequest) -> Pacing:
    # No client-side rate unless asked: the API server throttles with 429 +
    # Retry-After (API Priority and Fairness), which pauses the whole bucket.
    return Pacing(rate_per_minute=req.rate_limit or 1e9, max_inflight=req.max_inflight)


async def _check_gpu_limits(session: Context, plan: ClusterPlan) -> None:
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


async def push(
    session: Context,
    req: ClusterJobRequest,
    prepared: Prepared,
    plan: ClusterPlan,
    built: BuiltImage,
) -> str:
    """Push the built image where the cluster pulls from; returns it by digest."""
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


__all__ = ["ClusterPlan", "check", "describe", "placement_for"]
