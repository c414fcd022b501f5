"""``caliban cluster`` housekeeping: find, create and delete GKE clusters, list what
runs on a cluster, submit a manifest file.

Also where a :class:`~caliban.options.ClusterOptions` becomes a
:class:`~caliban.platforms.kubernetes.spec.ClusterTarget` (the address recorded with every job).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import yaml

# First: without the [cluster] extra, its missing client is what the user must hear of.
from caliban.platforms.kubernetes.client import KubeClient, kubeconfig_paths, read_kubeconfig

# isort: split
from caliban.adapters.cloud.gke_api import GkeApi
from caliban.adapters.cloud.http import GoogleApi
from caliban.core import settings
from caliban.core.userconfig import UserConfig
from caliban.errors import BackendError, ValidationError
from caliban.events import Document, Notice
from caliban.options import ClusterCreateRequest, ClusterOptions
from caliban.platforms.kubernetes import gkespec
from caliban.platforms.kubernetes import versions as k8sversions
from caliban.platforms.kubernetes.spec import ClusterTarget

if TYPE_CHECKING:
    from caliban.platforms.base import Context

ConfirmText = Callable[[str], Awaitable[bool]]


def key_file(
    opts: ClusterOptions, environ: Mapping[str, str], user_config: UserConfig | None = None
) -> str | None:
    """The credentials file as an absolute path (it is recorded with the jobs)."""
    return settings.key_file(opts.cloud_key, environ, user=user_config)


def uses_kubeconfig(
    opts: ClusterOptions, environ: Mapping[str, str], user_config: UserConfig | None = None
) -> bool:
    kube = bool(opts.kubeconfig or opts.context)
    if kube and opts.cluster_name:
        raise ValidationError(
            "--cluster_name names a GKE cluster; --kubeconfig/--context "
            "another cluster: pass one or the other"
        )
    # A kubeconfig set in the environment or the user file is a standing
    # choice of cluster, as long as no GKE cluster is named.
    configured = bool(environ.get("KUBECONFIG", "").strip()) or bool(
        user_config
        and (user_config.values.get("kubeconfig") or user_config.values.get("kube_context"))
    )
    return kube or (not opts.cluster_name and configured)


async def gke(session: Context, opts: ClusterOptions) -> tuple[GkeApi, str]:
    """The GKE API and the project: ``--project_id``, ``$PROJECT_ID``, or the
    credentials' own project."""
    creds = await session.credentials(key_file(opts, session.environ, session.user_config))
    project = session.text_setting("gcloud.project_id", opts.project_id) or creds.project_id
    if not project:
        raise ValidationError("no Google Cloud project: pass --project_id or set $PROJECT_ID")
    api = GkeApi(GoogleApi(await session.http(), creds), session.environ, opts.gke_endpoint)
    return api, project


async def find_cluster(
    session: Context, opts: ClusterOptions
) -> tuple[GkeApi, str, dict[str, Any]]:
    api, project = await gke(session, opts)
    location = gkespec.parse_location(opts.zone).name if opts.zone else "-"
    if opts.cluster_name and location != "-":
        return api, project, await api.cluster(project, location, opts.cluster_name)
    where = f"project {project}" + (f", {location}" if location != "-" else "")
    found = gkespec.pick_cluster(await api.clusters(project, location), opts.cluster_name, where)
    return api, project, dict(found)


async def resolve_target(session: Context, opts: ClusterOptions) -> ClusterTarget:
    """Where jobs go. A kubeconfig is only read (in a thread); a GKE cluster is looked
    up through the GKE API only when its name or location is not given."""
    if uses_kubeconfig(opts, session.environ, session.user_config):
        paths = kubeconfig_paths(session.text_setting("kubeconfig", opts.kubeconfig), {})
        wanted = session.text_setting("kube_context", opts.context)
        context, namespace = await anyio.to_thread.run_sync(read_kubeconfig, paths, wanted)
        return ClusterTarget(
            kind="kubeconfig",
            kubeconfig=paths,
            context=context,
            namespace=opts.namespace or namespace or "default",
        )
    if opts.cluster_name and opts.zone:
        gkespec.check_cluster_name(opts.cluster_name)
        location = gkespec.parse_location(opts.zone).name
        creds = await session.credentials(key_file(opts, session.environ, session.user_config))
        project = session.text_setting("gcloud.project_id", opts.project_id) or creds.project_id
        if not project:
            raise ValidationError("no Google Cloud project: pass --project_id or set $PROJECT_ID")
        name = opts.cluster_name
    else:
        _, project, cluster = await find_cluster(session, opts)
        location, name = str(cluster["location"]), str(cluster["name"])
    return ClusterTarget(
        kind="gke",
        project=project,
        location=location,
        cluster=name,
        cloud_key=key_file(opts, session.environ, session.user_config),
        endpoint=opts.gke_endpoint or session.environ.get("CALIBAN_GKE_ENDPOINT"),
        namespace=opts.namespace or "default",
    )


async def client(session: Context, opts: ClusterOptions) -> KubeClient:
    from caliban.platforms.kubernetes.client import connections

    return await (await connections(session)).client(await resolve_target(session, opts))


# -- GKE clusters ------------------------------------------------------------------------------


async def list_clusters(session: Context, opts: ClusterOptions) -> list[dict[str, Any]]:
    api, project = await gke(session, opts)
    location = gkespec.parse_location(opts.zone).name if opts.zone else "-"
    return await api.clusters(project, location)


async def create_cluster(session: Context, req: ClusterCreateRequest) -> dict[str, Any]:
    """Create a GKE cluster and wait for it; with ``dry_run``, return the request body."""
    opts = req.cluster
    name = gkespec.check_cluster_name(opts.cluster_name or gkespec.DEFAULT_CLUSTER_NAME)
    location = gkespec.parse_location(opts.zone)
    channel = gkespec.parse_release_channel(req.release_channel)
    if req.single_zone and not location.is_zone:
        raise ValidationError("--single_zone needs a zone (us-central1-a), not a region")
    if req.timeout_s <= 0:
        raise ValidationError("--timeout must be positive")
    api, project = await gke(session, opts)
    region = await api.region(project, location.region)
    limits = gkespec.resource_limits(region.get("quotas") or [])
    nodes: list[str] | None = None
    if location.is_zone:
        zones = sorted(str(z).rsplit("/", 1)[-1] for z in region.get("zones") or [])
        nodes = [location.name] if req.single_zone else (zones or [location.name])
    body = gkespec.create_body(
        project=project,
        name=name,
        location=location,
        release_channel=channel,
        node_locations=nodes,
        limits=limits,
    )
    if req.dry_run:
        return body
    existing = await api.clusters(project, location.name)
    if any(c.get("name") == name for c in existing):
        raise ValidationError(f"a GKE cluster named {name} already exists in {location.name}")
    url = gkespec.dashboard_url(project, location.name, name)
    session.sink(Notice(f"creating GKE cluster {name} in {location.name}: {url}"))
    op = await api.create(project, location.name, body)
    await api.wait(project, op, within=req.timeout_s, sink=session.sink)
    cluster = await api.cluster(project, location.name, name)
    session.sink(Notice(f"GKE cluster {name} is {cluster.get('status', '?').lower()}"))
    return cluster


async def delete_cluster(
    session: Context,
    opts: ClusterOptions,
    *,
    confirm: ConfirmText | None,
    timeout_s: float = 1800.0,
) -> bool:
    api, project, cluster = await find_cluster(session, opts)
    name, location = str(cluster["name"]), str(cluster["location"])
    if confirm is not None and not await confirm(
        f"Delete GKE cluster {name} in {location} (project {project}) and every job on it? [y/N] "
    ):
        return False
    session.sink(
        Notice(f"deleting GKE cluster {name}: {gkespec.dashboard_url(project, location, name)}")
    )
    op = await api.delete(project, location, name)
    await api.wait(project, op, within=timeout_s, sink=session.sink)
    session.sink(Notice(f"GKE cluster {name} is deleted"))
    return True


async def node_pools(session: Context, opts: ClusterOptions) -> list[tuple[str, str, str, str]]:
    api, project, cluster = await find_cluster(session, opts)
    pools = await api.node_pools(project, str(cluster["location"]), str(cluster["name"]))
    return gkespec.node_pool_rows(pools)


# -- what runs on a cluster ---------------------------------------------------------------------


async def pods(session: Context, opts: ClusterOptions) -> list[dict[str, Any]]:
    """Pods of ``--namespace``, else of every namespace but kube-system."""
    kube = await client(session, opts)
    found = await kube.list_pods(opts.namespace)
    return [p for p in found if p["metadata"].get("namespace") != "kube-system"]


async def jobs(session: Context, opts: ClusterOptions) -> list[dict[str, Any]]:
    """Jobs of ``--namespace``, else of every namespace."""
    return await (await client(session, opts)).list_jobs(opts.namespace)


def read_manifests(path: str) -> list[dict[str, Any]]:
    """The objects of a .yaml/.json file: one object, a ``List``, or YAML documents.

    Blocking (reads a file): call it in a thread.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ValidationError(f"{path}: a job file must be .yaml or .json")
    try:
        text = Path(path).read_text(encoding="utf-8")
        docs = [json.loads(text)] if suffix == ".json" else list(yaml.safe_load_all(text))
    except FileNotFoundError:
        raise ValidationError(f"job file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ValidationError(f"cannot read job file {path}: {exc}") from exc
    objects: list[dict[str, Any]] = []
    for doc in docs:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List":
            objects += list(doc.get("items") or [])
        else:
            objects.append(doc)
    for obj in objects:
        kind = (obj.get("apiVersion"), obj.get("kind")) if isinstance(obj, dict) else None
        if kind not in (("batch/v1", "Job"), ("v1", "ConfigMap")):
            raise ValidationError(
                f"{path}: only batch/v1 Jobs (and their v1 ConfigMaps) can be "
                f"submitted, not {kind or type(obj).__name__}"
            )
    if not objects:
        raise ValidationError(f"job file {path} holds no object")
    return objects


async def submit_file(
    session: Context, opts: ClusterOptions, path: str, *, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Create the objects of a manifest file as they are (not recorded in the history)."""
    objects = await anyio.to_thread.run_sync(read_manifests, path)
    if dry_run:
        session.sink(Document(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)))
        return objects
    kube = await client(session, opts)
    target = kube.target
    version = await kube.server_version()
    if warning := k8sversions.check_server(version, objects, where=target.display):
        session.sink(Notice(warning, level="warning"))
    created: list[dict[str, Any]] = []
    for obj in objects:
        ns = str(obj.get("metadata", {}).get("namespace") or target.namespace)
        make = kube.create_job if obj["kind"] == "Job" else kube.create_configmap
        try:
            result = await make(ns, obj)
        except BackendError as exc:
            if exc.status == 409:
                raise ValidationError(
                    f"{obj['kind']} {obj['metadata'].get('name')} already exists in {ns}"
                ) from exc
            raise
        created.append(result)
        name = str(result["metadata"]["name"])
        url = ""
        if target.kind == "gke" and obj["kind"] == "Job":
            assert target.project and target.location and target.cluster
            url = " " + gkespec.job_url(target.project, target.location, target.cluster, ns, name)
        session.sink(Notice(f"created {obj['kind']} {ns}/{name}{url}"))
    return created
