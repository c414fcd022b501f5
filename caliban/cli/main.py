"""The ``caliban`` command line: parse flags, call the library API, map errors to exit codes.

Kept thin and quick to start: nothing heavier than argparse is imported until
a command actually runs, so ``caliban --help`` answers at once. Exit codes:
0 all good, 1 a job or runtime failure, 2 bad input (nothing was written),
130 interrupted.

Imports point one way: this module assembles the parser from the handlers
(:mod:`caliban.cli.jobs`, ``cloud``, ``cluster``, ``dev``, ``config``), and
they share :mod:`caliban.cli.flags`, :mod:`caliban.cli.running` and
:mod:`caliban.cli.inputs`, never this module (tests/unit/test_cli_layout.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from caliban.cli.args import non_negative_int, positive_float, positive_int
from caliban.cli.flags import (
    Parser,
    building_flags,
    executing_flags,
    json_flag,
    split_script_args,
    suggest,
)
from caliban.cli.running import report
from caliban.errors import EXIT_FAILURE, EXIT_INTERRUPTED, CalibanError
from caliban.version import __version__

# -- parsing --------------------------------------------------------------------------------


def build_parser() -> Parser:
    from caliban.cli import cloud as cli_cloud
    from caliban.cli import cluster as cli_cluster
    from caliban.cli import completion, helptext, jobs, show
    from caliban.cli import config as cli_config
    from caliban.cli import dev as cli_dev
    from caliban.cli import results as cli_results
    from caliban.cli import slurm as cli_slurm

    parser = Parser(
        prog="caliban",
        description="Package research code in a Docker image and run it: locally, on Vertex AI "
        "custom jobs or on Kubernetes, one job or a sweep of hundreds.",
        epilog="Arguments after `--` are passed to your script. `caliban COMMAND --help` for more.",
    )
    parser.add_argument("--version", action="version", version=f"caliban {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )

    p = sub.add_parser("build", help="build the project's image and exit")
    building_flags(p)
    p.set_defaults(handler=jobs.cmd_build)

    p = sub.add_parser("run", help="run the project locally: one job or a whole sweep")
    executing_flags(p)
    p.add_argument("--image_id", help="run this image instead of building one")
    p.add_argument(
        "--docker_run_args",
        metavar="ARGS",
        help="extra `docker run` flags, e.g. --docker_run_args='--shm-size 2g' "
        "(supported flags: docs/docker-run-flags.md)",
    )
    p.add_argument(
        "--docker_create_json",
        metavar="FILE",
        help="a JSON fragment deep-merged into the Engine API container-create body",
    )
    p.add_argument("--xgroup", help="experiment group to record the jobs in (default: a new one)")
    p.add_argument(
        "--max_parallel",
        type=positive_int,
        metavar="N",
        help="run at most N jobs at once (default: one per GPU slot, or per CPU core with --nogpu)",
    )
    p.add_argument(
        "--gpus_per_job",
        type=positive_int,
        metavar="K",
        help="GPUs each job holds exclusively (default 1)",
    )
    p.add_argument(
        "--gpu_ids",
        metavar="IDS",
        help="GPUs caliban may use, by index or GPU-/MIG- UUID, e.g. 0,1,3 "
        "(default: all that nvidia-smi lists)",
    )
    p.add_argument(
        "--cpus_per_job",
        type=positive_int,
        metavar="N",
        help="CPU cores each job holds exclusively, nearest its GPUs when known "
        "(default: jobs share all cores)",
    )
    json_flag(p, "the outcome (xgroup, counts, job ids and states)")
    p.set_defaults(handler=jobs.cmd_run)

    p = sub.add_parser("status", help="show recorded jobs and their current state")
    p.add_argument("--xgroup", help="show this experiment group")
    p.add_argument(
        "--max_jobs",
        type=non_negative_int,
        metavar="N",
        help="jobs to show (default 8; with --xgroup: per experiment, default 1; 0 = all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(handler=jobs.cmd_status)

    p = sub.add_parser("watch", help="follow a sweep until every job has ended")
    p.add_argument("--xgroup", help="experiment group (default: the latest job's)")
    p.add_argument(
        "--max_recoveries",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="create a preempted Spot job again, up to N times (default 0)",
    )
    p.add_argument(
        "--interval",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how often to ask the platforms (default 10)",
    )
    p.add_argument("--cloud_key", metavar="KEY_FILE", help="service account key file")
    p.set_defaults(handler=jobs.cmd_watch)

    p = sub.add_parser("stop", help="stop running jobs")
    p.add_argument("--xgroup", help="only jobs of this experiment group")
    p.add_argument("--dry_run", action="store_true", help="list what would be stopped")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=jobs.cmd_stop)

    p = sub.add_parser("resubmit", help="run again the failed or stopped jobs of a group")
    p.add_argument("--xgroup", required=True, help="experiment group to resubmit")
    p.add_argument(
        "--all_jobs",
        action="store_true",
        help="resubmit every finished job, not only failed and stopped ones",
    )
    p.add_argument("--dry_run", action="store_true", help="list what would be resubmitted")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--project_id", help="Google Cloud project (cloud jobs)")
    p.add_argument("--cloud_key", metavar="KEY_FILE", help="service account key file")
    p.add_argument(
        "--max_parallel", type=positive_int, metavar="N", help="local jobs to run at once"
    )
    p.set_defaults(handler=jobs.cmd_resubmit)

    p = sub.add_parser("logs", help="print the output of a job, or the end of a sweep's failures")
    p.add_argument(
        "job_id", nargs="?", help="job id, or its last 8 characters as `caliban status` shows"
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing while it runs")
    p.add_argument("--xgroup", metavar="X", help="with --failed: the experiment group to read")
    p.add_argument(
        "--failed",
        action="store_true",
        help="the end of every failed job's output in --xgroup, each with a likely cause",
    )
    p.add_argument(
        "--tail", type=positive_int, metavar="N", help="with --failed: lines per job (default 20)"
    )
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(handler=jobs.cmd_logs)
    cli_dev.register(sub)
    cli_cloud.register(sub)
    cli_cluster.register(sub)
    cli_config.register(sub)
    cli_slurm.register(sub)
    cli_results.register(sub)
    show.register(sub)
    completion.register(sub, parser)
    helptext.apply(parser)
    return parser


# -- entry point ------------------------------------------------------------------------------


def _reject_extra(
    parser: Parser,
    flag_parser: Parser,
    ns: argparse.Namespace,
    caliban_args: Sequence[str],
    extra: Sequence[str],
) -> None:
    """Say why arguments were left over: a misspelt flag, or script arguments without `--`."""
    module = getattr(ns, "module", None)
    # A flag argparse did not know takes the place of the script when a value
    # follows it (`run --max_paralel 4 train.py` makes '4' the module), so a
    # flag before the script, or one close to a real flag, is a caliban flag
    # misspelt, not a script argument in the wrong place.
    module_at = max(
        (i for i, a in enumerate(caliban_args) if a == module), default=len(caliban_args)
    )
    for arg in extra:
        if not arg.startswith("-") or arg == "-":
            continue
        name = arg.split("=", 1)[0]
        if caliban_args.index(arg) < module_at or suggest(name, flag_parser.flags()):
            flag_parser.error(flag_parser.unknown_flag(arg))
    if module is not None:
        parser.error(
            f"unexpected arguments {' '.join(extra)!r} after {module!r}: put caliban flags "
            f"before the script and pass script arguments after `--`, e.g. "
            f"caliban {ns.command} ... {module} -- {' '.join(extra)}"
        )
    flag_parser.error(f"unrecognized arguments: {' '.join(extra)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    caliban_args, script_args = split_script_args(args)
    parser = build_parser()
    ns, extra = parser.parse_known_args(caliban_args)
    flag_parser = vars(ns).pop("_flag_parser", parser)
    if extra:
        _reject_extra(parser, flag_parser, ns, caliban_args, extra)
    ns.verbose = bool(getattr(ns, "verbose", False))
    ns.quiet = bool(getattr(ns, "quiet", False))
    if ns.verbose and ns.quiet:
        parser.error("--verbose and --quiet contradict each other: give one")
    ns.script_args = script_args
    ns.argv = tuple(args)
    if script_args and not hasattr(ns, "module"):
        parser.error(f"`caliban {ns.command}` takes no script arguments after `--`")
    try:
        code: int = ns.handler(ns)
    except CalibanError as exc:
        report(exc, ns)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `caliban status --json | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return EXIT_FAILURE
    return code


def run() -> NoReturn:
    """The ``caliban`` command: :func:`main`, then a quick exit."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` once the exit handlers ran, without the interpreter's
    teardown of every module and object: 60-200 ms after a sweep (more on a busy
    machine), spent on nothing that a command leaves open by then. With a thread
    still running, or output that cannot be flushed, the usual way instead."""
    import atexit
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # the reader left, or closed: let Python report it
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()  # what the exit handlers said
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run()
