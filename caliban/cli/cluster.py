"""``caliban cluster``: GKE clusters, and sweeps as Kubernetes Jobs on any cluster.

Subcommands as in the original (``ls``, ``create``, ``delete``, ``node_pool ls``,
``pod ls``, ``job ls``, ``job submit``, ``job submit_file``), plus ``--kubeconfig``
/ ``--context`` / ``--namespace`` for clusters that are not GKE. Nothing beyond
argparse is imported until a command runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from caliban.cli import inputs, running
from caliban.cli.args import key_value, non_negative_int, positive_int
from caliban.cli.flags import Parser, executing_flags, json_flag
from caliban.errors import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from caliban.cli.ui import ConsoleSink
    from caliban.options import ClusterOptions
    from caliban.session import RunResult, Session


def _gke_flags(p: argparse.ArgumentParser, *, cloud_key: bool = True) -> None:
    p.add_argument(
        "--project_id",
        help="Google Cloud project (default: $PROJECT_ID or the credentials' project)",
    )
    if cloud_key:
        p.add_argument(
            "--cloud_key",
            metavar="KEY_FILE",
            help="service account key file (default: $GOOGLE_APPLICATION_CREDENTIALS)",
        )
    p.add_argument(
        "--quota_project",
        metavar="PROJECT",
        help="project billed for Google API calls (default: $GOOGLE_CLOUD_QUOTA_PROJECT or "
        "the credentials' quota_project_id)",
    )
    p.add_argument(
        "--zone",
        metavar="LOCATION",
        help="zone (us-central1-a) or region of the GKE cluster (default: search every location)",
    )


def _cluster_flags(
    p: argparse.ArgumentParser, *, cloud_key: bool = True, kube: bool = True
) -> None:
    p.add_argument("--cluster_name", help="GKE cluster (default: the project's only cluster)")
    _gke_flags(p, cloud_key=cloud_key)
    if kube:
        p.add_argument(
            "--kubeconfig",
            metavar="FILE",
            help="reach any Kubernetes cluster "
            "through this kubeconfig (default: $KUBECONFIG) instead of GKE",
        )
        p.add_argument("--context", help="kubeconfig context (default: its current-context)")
        p.add_argument("--namespace", "-n", help="namespace (default: the context's, or default)")


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true", help="say more, show tracebacks")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="GKE clusters, and sweeps as Kubernetes Jobs on any cluster",
        description="Manage GKE clusters, and submit sweeps as Kubernetes Jobs to GKE or to "
        "any cluster in a kubeconfig.",
    )
    commands = cluster.add_subparsers(
        dest="cluster_command", metavar="COMMAND", required=True, parser_class=Parser
    )

    p = commands.add_parser("ls", help="list the project's GKE clusters")
    _gke_flags(p)
    _verbose(p)
    json_flag(p, "the list")
    p.set_defaults(handler=cmd_ls)

    p = commands.add_parser("create", help="create a GKE cluster with node auto-provisioning")
    p.add_argument("--cluster_name", default="blueshift", help="cluster name (default blueshift)")
    _gke_flags(p)
    p.add_argument(
        "--release_channel",
        default="REGULAR",
        type=str.upper,
        choices=["UNSPECIFIED", "RAPID", "REGULAR", "STABLE"],
        help="GKE release channel (default REGULAR)",
    )
    p.add_argument(
        "--single_zone",
        action="store_true",
        help="nodes in the cluster's zone only (default: every zone of its region)",
    )
    p.add_argument("--dry_run", action="store_true", help="print the request; create nothing")
    p.add_argument(
        "--timeout",
        type=positive_int,
        default=1800,
        metavar="SECONDS",
        help="how long to wait for the cluster (default 1800)",
    )
    _verbose(p)
    p.set_defaults(handler=cmd_create)

    p = commands.add_parser("delete", help="delete a GKE cluster (asks first)")
    _cluster_flags(p, kube=False)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--timeout",
        type=positive_int,
        default=1800,
        metavar="SECONDS",
        help="how long to wait for the deletion (default 1800)",
    )
    _verbose(p)
    p.set_defaults(handler=cmd_delete)

    pools = commands.add_parser("node_pool", help="node pools of a GKE cluster")
    pool_commands = pools.add_subparsers(
        dest="node_pool_command", metavar="COMMAND", required=True, parser_class=Parser
    )
    p = pool_commands.add_parser("ls", help="list node pools")
    _cluster_flags(p, kube=False)
    _verbose(p)
    p.set_defaults(handler=cmd_node_pools)

    pods = commands.add_parser("pod", help="pods on a cluster")
    pod_commands = pods.add_subparsers(
        dest="pod_command", metavar="COMMAND", required=True, parser_class=Parser
    )
    p = pod_commands.add_parser("ls", help="list pods (every namespace but kube-system)")
    _cluster_flags(p)
    _verbose(p)
    p.set_defaults(handler=cmd_pods)

    jobs = commands.add_parser("job", help="Kubernetes Jobs: list, submit")
    job_commands = jobs.add_subparsers(
        dest="job_command", metavar="COMMAND", required=True, parser_class=Parser
    )
    p = job_commands.add_parser("ls", help="list Jobs (every namespace unless --namespace)")
    _cluster_flags(p)
    _verbose(p)
    json_flag(p, "the list")
    p.set_defaults(handler=cmd_jobs)

    p = job_commands.add_parser(
        "submit",
        help="one Kubernetes Job per experiment (or one Indexed Job)",
        description="Build and push the project's image, then create one Kubernetes Job per "
        "experiment (or, with --indexed, one Indexed Job for the whole sweep).",
    )
    _submit_flags(p)
    p.set_defaults(handler=cmd_submit)

    p = job_commands.add_parser("submit_file", help="create the Jobs of a .yaml/.json file")
    _cluster_flags(p)
    p.add_argument("--dry_run", action="store_true", help="print the objects; create nothing")
    p.add_argument("job_file", help="manifest file (.yaml or .json)")
    _verbose(p)
    p.set_defaults(handler=cmd_submit_file)


def _submit_flags(p: argparse.ArgumentParser) -> None:
    executing_flags(p)  # --nogpu --cloud_key --extras --no_cache -v -d module --experiment_config
    _cluster_flags(p, cloud_key=False)
    p.add_argument("--image_tag", help="submit this image instead of building and pushing one")
    p.add_argument(
        "--gpu_spec", metavar="NxTYPE", help="GPUs per job, e.g. 2xT4 (default 1xT4 in GPU mode)"
    )
    p.add_argument("--tpu_spec", metavar="NxTYPE", help="TPU chips per job, e.g. 4xV5E (GKE)")
    p.add_argument(
        "--min_cpu",
        type=positive_int,
        metavar="MILLICPU",
        help="CPU request in milli-CPU (default: 1500 with accelerators, 31000 "
        "without on GKE; 1000 on other clusters)",
    )
    p.add_argument(
        "--min_mem",
        type=positive_int,
        metavar="MB",
        help="memory request in MB (default: 7000 / 25000 on GKE; 4000 / 2000 on other clusters)",
    )
    place = p.add_mutually_exclusive_group()
    place.add_argument("--spot", action="store_true", help="run on GKE Spot VMs")
    place.add_argument(
        "--preemptible", action="store_true", help="run on legacy GKE preemptible nodes"
    )
    place.add_argument(
        "--nonpreemptible",
        action="store_true",
        help="on-demand nodes (the default; kept for compatibility)",
    )
    p.add_argument(
        "--nonpreemptible_tpu",
        action="store_true",
        help="TPUs on on-demand nodes (the default; kept for compatibility)",
    )
    p.add_argument("--tpu_driver", help=argparse.SUPPRESS)
    p.add_argument(
        "--cluster_type",
        choices=["gke", "generic"],
        help="gke: select GPU type, TPUs and spot nodes with GKE node labels; "
        "generic: only request resources (default: gke for --cluster_name, generic "
        "for --kubeconfig)",
    )
    p.add_argument(
        "--node_selector",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="node label every pod needs; repeatable",
    )
    p.add_argument(
        "--compute_class",
        metavar="NAME",
        help="GKE custom ComputeClass the pods run on (it picks the machine, GPU type "
        "and Spot; needs --cluster_type gke)",
    )
    p.add_argument(
        "--queue",
        metavar="LOCALQUEUE",
        help="Kueue LocalQueue of the namespace: Jobs are created suspended and start "
        "when Kueue admits them (QUEUED until then)",
    )
    p.add_argument(
        "--priority_class",
        metavar="NAME",
        help="with --queue: Kueue WorkloadPriorityClass of the Jobs",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="skip checking the GPUs against the GKE cluster's limits",
    )
    p.add_argument("--name", help="Job name prefix (default: caliban-<user>)")
    p.add_argument(
        "-l",
        "--label",
        action="append",
        default=[],
        type=key_value,
        dest="labels",
        metavar="KEY=VALUE",
        help="label on every Job and pod; repeatable",
    )
    p.add_argument("--xgroup", help="experiment group (default: a new one)")
    json_flag(p, "the outcome (xgroup, counts, job ids and states)")
    p.add_argument(
        "--export",
        metavar="FILE",
        help="write the manifests to FILE.yaml or "
        "FILE.json (FILE_0, FILE_1... for several) instead of submitting",
    )
    p.add_argument(
        "--indexed",
        action="store_true",
        help="submit the sweep as one Indexed Job: one API call for all experiments",
    )
    p.add_argument(
        "--max_parallel",
        type=positive_int,
        metavar="N",
        help="with --indexed: experiments running at once (default: all)",
    )
    p.add_argument(
        "--backoff_limit",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="retries of a failed pod (default 0; spot/preemption evictions never count)",
    )
    p.add_argument(
        "--ttl",
        type=non_negative_int,
        default=7 * 24 * 3600,
        metavar="SECONDS",
        dest="ttl_seconds",
        help="delete finished Jobs after this long (default 7 days)",
    )
    p.add_argument(
        "--max_inflight",
        type=positive_int,
        default=64,
        metavar="N",
        help="create requests in flight at once (default 64)",
    )
    p.add_argument(
        "--rate_limit",
        type=float,
        metavar="PER_MINUTE",
        help="Job creations per minute (default: no limit but the server's)",
    )
    p.add_argument(
        "--image_registry",
        metavar="HOST/PATH",
        help="push the image there (needed for non-GKE clusters; also $CALIBAN_IMAGE_REGISTRY)",
    )
    p.add_argument(
        "--artifact_repo",
        default="caliban",
        metavar="REPO",
        help="Artifact Registry repository for GKE (default: caliban)",
    )


def _options(ns: argparse.Namespace) -> ClusterOptions:
    from caliban.options import ClusterOptions

    return ClusterOptions(
        cluster_name=getattr(ns, "cluster_name", None),
        zone=getattr(ns, "zone", None),
        project_id=getattr(ns, "project_id", None),
        cloud_key=getattr(ns, "cloud_key", None),
        kubeconfig=getattr(ns, "kubeconfig", None),
        context=getattr(ns, "context", None),
        namespace=getattr(ns, "namespace", None),
    )


def _table(sink: ConsoleSink, headers: list[str], rows: list[tuple[str, ...]]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="dim", show_edge=False, padding=(0, 1))
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    sink.console.print(table)


def _run_listing(ns: argparse.Namespace, work: Any, headers: list[str], empty: str) -> int:
    sink = running.make_sink(ns)
    rows, code = running.execute(ns, work, sink)
    if rows is None:
        return code if code is not None else EXIT_FAILURE
    if getattr(ns, "json", False):
        import json
        import sys

        keys = [h.lower() for h in headers]
        sys.stdout.write(
            json.dumps([dict(zip(keys, row, strict=True)) for row in rows], indent=2) + "\n"
        )
    elif rows:
        _table(sink, headers, rows)
    else:
        sink.console.print(empty)
    return EXIT_OK


def cmd_ls(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> list[tuple[str, ...]]:
        found = await session.cluster_list(_options(ns))
        return [
            (
                str(c.get("name")),
                str(c.get("location")),
                str(c.get("status")),
                str(c.get("currentMasterVersion", "")),
            )
            for c in found
        ]

    return _run_listing(ns, work, ["NAME", "LOCATION", "STATUS", "VERSION"], "no clusters")


def cmd_create(ns: argparse.Namespace) -> int:
    from caliban.options import ClusterCreateRequest

    request = ClusterCreateRequest(
        cluster=_options(ns),
        release_channel=ns.release_channel,
        single_zone=ns.single_zone,
        dry_run=ns.dry_run,
        timeout_s=float(ns.timeout),
    )
    sink = running.make_sink(ns)

    async def work(session: Session) -> dict[str, Any]:
        return await session.cluster_create(request)

    result, code = running.execute(ns, work, sink)
    if result is None:
        return code if code is not None else EXIT_FAILURE
    if ns.dry_run:
        import json

        print(json.dumps(result, indent=2))
        sink.err.print("dry run: nothing was created")
    return EXIT_OK


def cmd_delete(ns: argparse.Namespace) -> int:
    async def confirm(question: str) -> bool:
        import anyio

        if ns.yes:
            return True
        answer: str = await anyio.to_thread.run_sync(running.ask, question, abandon_on_cancel=True)
        return answer.strip().lower() in ("y", "yes")

    async def work(session: Session) -> bool:
        return await session.cluster_delete(
            _options(ns), confirm=confirm, timeout_s=float(ns.timeout)
        )

    sink = running.make_sink(ns)
    deleted, code = running.execute(ns, work, sink)
    if code is not None:
        return code
    if not deleted:
        sink.console.print("not deleted")
    return EXIT_OK


def cmd_node_pools(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> list[tuple[str, ...]]:
        return list(await session.cluster_node_pools(_options(ns)))

    return _run_listing(
        ns, work, ["NAME", "MACHINE TYPE", "ACCELERATORS", "MAX NODES"], "no node pools"
    )


def cmd_pods(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> list[tuple[str, ...]]:
        found = await session.cluster_pods(_options(ns))
        return [
            (
                str(p["metadata"].get("namespace")),
                str(p["metadata"]["name"]),
                str((p.get("status") or {}).get("phase", "")),
                str((p["metadata"].get("labels") or {}).get("job-name", "")),
            )
            for p in found
        ]

    return _run_listing(ns, work, ["NAMESPACE", "NAME", "PHASE", "JOB"], "no pods")


def cmd_jobs(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> list[tuple[str, ...]]:
        return list(await session.cluster_jobs(_options(ns)))

    return _run_listing(ns, work, ["JOB", "STATE", "SUCCEEDED", "STARTED"], "no jobs")


def cmd_submit(ns: argparse.Namespace) -> int:
    from caliban.options import ClusterJobRequest

    if ns.tpu_driver:  # on stderr: stdout may be the --dry_run manifests
        import sys

        print(
            "caliban: --tpu_driver is ignored: GKE TPU VMs come with their runtime", file=sys.stderr
        )
    request = ClusterJobRequest(
        project=inputs.project_options(ns, entry=ns.module),
        cluster=_options(ns),
        experiments=inputs.experiments(ns),
        script_args=tuple(ns.script_args),
        xgroup=ns.xgroup,
        name=ns.name,
        labels=tuple(ns.labels),
        image_tag=ns.image_tag,
        gpu_spec=ns.gpu_spec,
        tpu_spec=ns.tpu_spec,
        min_cpu=ns.min_cpu,
        min_mem=ns.min_mem,
        spot=ns.spot,
        preemptible=ns.preemptible,
        cluster_type=ns.cluster_type,
        node_selector=tuple(ns.node_selector),
        indexed=ns.indexed,
        max_parallel=ns.max_parallel,
        backoff_limit=ns.backoff_limit,
        ttl_seconds=ns.ttl_seconds,
        export=ns.export,
        dry_run=ns.dry_run,
        force=ns.force,
        max_inflight=ns.max_inflight,
        rate_limit=ns.rate_limit,
        image_registry=ns.image_registry,
        artifact_repo=ns.artifact_repo,
        max_sweep=ns.max_sweep,
        queue=ns.queue,
        priority_class=ns.priority_class,
        compute_class=ns.compute_class,
    )
    sink = running.make_sink(ns, show_output=False)

    async def work(session: Session) -> RunResult:
        return await session.cluster_submit(request)

    result, code = running.execute(ns, work, sink)
    if result is None or result.dry_run:
        return code if code is not None else (EXIT_OK if result else EXIT_FAILURE)
    summary = running.summary(sink, result, ns)
    return code if code is not None else summary


def cmd_submit_file(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> list[dict[str, Any]]:
        return await session.cluster_submit_file(_options(ns), ns.job_file, dry_run=ns.dry_run)

    created, code = running.execute(ns, work, running.make_sink(ns))
    if created is None:
        return code if code is not None else EXIT_FAILURE
    return EXIT_OK
