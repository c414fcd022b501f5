"""``caliban slurm submit``: its flags and the call it makes.

Nothing beyond argparse is imported until the command runs.
"""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING, Any

from caliban.cli import inputs, running
from caliban.cli.args import positive_int
from caliban.cli.flags import executing_flags
from caliban.errors import EXIT_FAILURE, EXIT_OK, ValidationError

if TYPE_CHECKING:
    from caliban.session import RunResult, Session


def register(sub: argparse._SubParsersAction[Any]) -> None:
    top = sub.add_parser(
        "slurm",
        help="run sweeps on a Slurm cluster",
        description="Run the project's image on a Slurm cluster: one array job per sweep.",
    )
    inner = top.add_subparsers(dest="slurm_command", metavar="COMMAND", required=True)
    p = inner.add_parser(
        "submit",
        help="submit a sweep as one Slurm array job",
        description="Build the project's image, then submit the sweep as one Slurm array job "
        "(each task picks its arguments by SLURM_ARRAY_TASK_ID and runs the image with "
        "`docker run` on its node). Status, stop, resubmit and logs work as for every platform.",
    )
    executing_flags(p)
    p.add_argument("--image_tag", help="run this image instead of building one")
    p.add_argument("--xgroup", help="experiment group (default: a new one)")
    p.add_argument("--partition", help="partition (default: the cluster's default)")
    p.add_argument("--time", help="time limit per task (MINUTES, HH:MM:SS or DAYS-HH:MM:SS)")
    p.add_argument("--mem", help="memory per task, e.g. 16G")
    p.add_argument("--cpus_per_job", type=positive_int, metavar="N", help="CPUs per task")
    p.add_argument(
        "--gpus_per_job",
        type=int,
        metavar="K",
        help="GPUs per task (default: 1 in GPU mode, 0 with --nogpu)",
    )
    p.add_argument(
        "--gpu_flag",
        choices=("gres", "gpus"),
        default="gres",
        help="ask for GPUs with --gres=gpu:K (default) or --gpus=K",
    )
    p.add_argument(
        "--max_parallel", type=positive_int, metavar="N", help="tasks running at once (%%N)"
    )
    p.add_argument("--account", help="account to charge")
    p.add_argument("--qos", help="quality of service")
    p.add_argument(
        "--sbatch_args", metavar="ARGS", help="more sbatch options, e.g. '--exclusive --nice=10'"
    )
    p.add_argument(
        "--docker_run_args", metavar="ARGS", help="extra `docker run` flags for every task"
    )
    p.add_argument(
        "--host",
        metavar="USER@LOGIN",
        help="reach the cluster's login node over ssh (default: run Slurm's commands here)",
    )
    p.add_argument(
        "--ssh_option",
        action="append",
        default=[],
        dest="ssh_options",
        metavar="OPTION",
        help="ssh -o option for --host, e.g. Port=2222; repeatable",
    )
    p.add_argument(
        "--slurm_dir",
        metavar="DIR",
        help="folder on the cluster's shared filesystem for scripts, arguments and logs "
        "(default: $CALIBAN_HOME/slurm here, ~/.caliban/slurm on --host)",
    )
    p.add_argument(
        "--per_job",
        action="store_true",
        help="one job per experiment instead of one array (sites that forbid arrays)",
    )
    p.add_argument(
        "--runtime",
        choices=("docker", "oci"),
        help="how each task runs the image: `docker run` on the node (default), or an OCI "
        "bundle exported from the image and run by Slurm's --container (oci.conf on the nodes); "
        "default: slurm.runtime of .calibanconfig.json, else docker",
    )
    p.add_argument(
        "--bundle_dir",
        metavar="DIR",
        help="with --runtime oci: folder on the shared filesystem for the bundles, one per "
        "image (default: slurm.bundle_dir of .calibanconfig.json, else --slurm_dir)",
    )
    p.set_defaults(handler=cmd_slurm_submit)


def _split(flag: str, text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise ValidationError(f"{flag}: {exc}") from exc


def request_from(ns: argparse.Namespace) -> Any:
    from caliban.options import SlurmRequest

    if ns.gpus_per_job is not None and ns.gpus_per_job < 0:
        raise ValidationError("--gpus_per_job must be 0 or more")
    return SlurmRequest(
        project=inputs.project_options(ns, entry=ns.module),
        experiments=inputs.experiments(ns),
        script_args=tuple(ns.script_args),
        xgroup=ns.xgroup,
        partition=ns.partition,
        time=ns.time,
        mem=ns.mem,
        cpus_per_job=ns.cpus_per_job,
        gpus_per_job=ns.gpus_per_job,
        gpu_flag=ns.gpu_flag,
        max_parallel=ns.max_parallel,
        account=ns.account,
        qos=ns.qos,
        sbatch_args=_split("--sbatch_args", ns.sbatch_args),
        docker_run_args=_split("--docker_run_args", ns.docker_run_args),
        host=ns.host,
        ssh_options=tuple(x for o in ns.ssh_options for x in ("-o", o)),
        slurm_dir=ns.slurm_dir,
        per_job=ns.per_job,
        image_tag=ns.image_tag,
        dry_run=ns.dry_run,
        max_sweep=ns.max_sweep,
        runtime=ns.runtime,
        bundle_dir=ns.bundle_dir,
    )


def cmd_slurm_submit(ns: argparse.Namespace) -> int:
    request = request_from(ns)  # bad input: main() reports it, nothing has run
    sink = running.make_sink(ns, show_output=False)

    async def work(session: Session) -> RunResult:
        return await session.slurm(request)

    result, code = running.execute(ns, work, sink)
    if result is None or result.dry_run:
        return code if code is not None else (EXIT_OK if result else EXIT_FAILURE)
    summary = running.summary(sink, result)
    return code if code is not None else summary
