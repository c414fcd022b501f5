"""``caliban cloud``: its flags and the call it makes.

Nothing beyond argparse is imported until the command runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from caliban.cli import inputs, running
from caliban.cli.args import key_value, positive_float, positive_int
from caliban.cli.flags import executing_flags, json_flag
from caliban.errors import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from caliban.session import RunResult, Session


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "cloud",
        help="submit one Vertex AI custom job per experiment",
        description="Build and push the project's image, then submit one Vertex AI custom "
        "job per experiment, paced to the quota, retried on transient errors, never twice.",
    )
    executing_flags(p)
    p.add_argument("--image_tag", help="submit this image instead of building and pushing one")
    p.add_argument(
        "--project_id",
        help="Google Cloud project (default: $PROJECT_ID, "
        "gcloud.project_id in .calibanconfig.json, or the key file's project)",
    )
    p.add_argument(
        "--region",
        action="append",
        default=[],
        dest="regions",
        metavar="REGION",
        help="region(s) to submit to, comma-separated or repeated; jobs are spread "
        "over them (default: $REGION or us-central1)",
    )
    p.add_argument("--machine_type", help="machine type (default: one that fits the GPUs)")
    p.add_argument(
        "--gpu_spec", metavar="NxTYPE", help="GPUs per job, e.g. 2xV100 (default 1xT4 in GPU mode)"
    )
    p.add_argument("--tpu_spec", metavar="NxTYPE", help="TPUs per job, e.g. 8xV3")
    p.add_argument(
        "--force", action="store_true", help="skip the machine/accelerator/region checks"
    )
    p.add_argument("--name", help="job display name prefix (default: caliban_<user>)")
    p.add_argument(
        "-l",
        "--label",
        action="append",
        default=[],
        type=key_value,
        dest="labels",
        metavar="KEY=VALUE",
        help="label for every job; repeatable",
    )
    p.add_argument(
        "--quota_project",
        metavar="PROJECT",
        help="project billed for Google API calls (default: $GOOGLE_CLOUD_QUOTA_PROJECT or "
        "the credentials' quota_project_id)",
    )
    p.add_argument("--xgroup", help="experiment group (default: a new one)")
    json_flag(p, "the outcome (xgroup, counts, job ids and states)")
    p.add_argument("--spot", action="store_true", help="run on Spot capacity")
    _placement_flags(p)
    p.add_argument("--service_account", help="service account the jobs run as")
    p.add_argument(
        "--rate_limit",
        type=positive_float,
        default=60.0,
        metavar="PER_MINUTE",
        help="job creations per minute per region (default 60, Vertex's quota)",
    )
    p.add_argument(
        "--max_inflight",
        type=positive_int,
        default=16,
        metavar="N",
        help="requests in flight at once (default 16)",
    )
    p.add_argument(
        "--api_endpoint",
        metavar="URL",
        help="Vertex API base URL (default https://REGION-aiplatform.googleapis.com;"
        " also $CALIBAN_VERTEX_ENDPOINT)",
    )
    p.add_argument(
        "--artifact_repo",
        default="caliban",
        metavar="REPO",
        help="Artifact Registry repository to push to (default: caliban)",
    )
    p.add_argument(
        "--image_registry",
        metavar="HOST/PATH",
        help="push to this registry instead of Artifact Registry (also $CALIBAN_IMAGE_REGISTRY)",
    )
    p.set_defaults(handler=cmd_cloud)


def _placement_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("placement (docs/capacity.md)")
    g.add_argument(
        "--flex_start",
        action="store_true",
        help="queue for capacity with Dynamic Workload Scheduler (FLEX_START)",
    )
    g.add_argument(
        "--max_wait",
        metavar="DURATION",
        help="with --flex_start: how long to wait for capacity, e.g. 2h (0: no limit; "
        "Vertex's default 24h)",
    )
    g.add_argument(
        "--reservation",
        metavar="ZONE/NAME|any",
        help="consume this Compute Engine reservation (or any matching one)",
    )
    g.add_argument(
        "--persistent_resource", metavar="ID", help="run on this Vertex persistent resource"
    )
    g.add_argument(
        "--timeout", metavar="DURATION", help="longest a job may run, e.g. 12h (default 7 days)"
    )
    g.add_argument(
        "--no_platform_retries",
        action="store_true",
        help="do not let Vertex restart failed workers or retry the job itself",
    )
    g.add_argument(
        "--capacity",
        metavar="RUNG,...",
        help="capacity ladder: reservation:ZONE/NAME, flex[:DURATION], spot, standard; "
        "`caliban watch` moves a job waiting or refused for capacity to the next rung or region",
    )
    g.add_argument(
        "--queue_timeout",
        metavar="DURATION",
        help="with --capacity: how long a job may wait for capacity before it is moved "
        "(default 30m)",
    )


def cmd_cloud(ns: argparse.Namespace) -> int:
    from caliban.options import CloudRequest

    request = CloudRequest(
        project=inputs.project_options(ns, entry=ns.module),
        experiments=inputs.experiments(ns),
        script_args=tuple(ns.script_args),
        xgroup=ns.xgroup,
        project_id=ns.project_id,
        regions=tuple(ns.regions),
        machine_type=ns.machine_type,
        gpu_spec=ns.gpu_spec,
        tpu_spec=ns.tpu_spec,
        force=ns.force,
        name=ns.name,
        labels=tuple(ns.labels),
        image_tag=ns.image_tag,
        cloud_key=ns.cloud_key,
        dry_run=ns.dry_run,
        rate_limit=ns.rate_limit,
        max_inflight=ns.max_inflight,
        spot=ns.spot,
        flex_start=ns.flex_start,
        max_wait=ns.max_wait,
        reservation=ns.reservation,
        persistent_resource=ns.persistent_resource,
        timeout=ns.timeout,
        no_platform_retries=ns.no_platform_retries,
        capacity=ns.capacity,
        queue_timeout=ns.queue_timeout,
        service_account=ns.service_account,
        endpoint=ns.api_endpoint,
        artifact_repo=ns.artifact_repo,
        image_registry=ns.image_registry,
        max_sweep=ns.max_sweep,
    )
    sink = running.make_sink(ns, show_output=False)

    async def work(session: Session) -> RunResult:
        return await session.cloud(request)

    result, code = running.execute(ns, work, sink)
    if result is None or result.dry_run:
        return code if code is not None else (EXIT_OK if result else EXIT_FAILURE)
    summary = running.summary(sink, result, ns)
    return code if code is not None else summary
