"""The ``caliban`` command line: parse flags, call the library API, map errors to exit codes.

Kept thin and quick to start: nothing heavier than argparse is imported until
a command actually runs, so ``caliban --help`` answers at once. Exit codes:
0 all good, 1 a job or runtime failure, 2 bad input (nothing was written),
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from caliban.cli.args import non_negative_int, positive_int
from caliban.core.experiment import DEFAULT_MAX_SWEEP
from caliban.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CalibanError,
    ValidationError,
)

if sys.version_info < (3, 11):  # the builtin arrived in 3.11; anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from caliban.cli.ui import ConsoleSink
    from caliban.session import RunResult, Session
    from caliban.spec import JobRecord

T = TypeVar("T")

__version__ = "0.5.0.dev0"


# -- parsing --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as for every bad input
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _split_script_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Everything after the first ``--`` belongs to the user's script."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _base(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nogpu",
        dest="use_gpu",
        action="store_false",
        default=None,
        help="build and run in CPU mode (default: GPU mode, or default_mode of "
        ".calibanconfig.json)",
    )
    p.add_argument(
        "--cloud_key",
        metavar="KEY_FILE",
        help="service account key file (default: $GOOGLE_APPLICATION_CREDENTIALS)",
    )
    p.add_argument(
        "--extras",
        action="append",
        default=[],
        metavar="EXTRA",
        help="setup.py extra to install; repeatable",
    )
    p.add_argument(
        "--no_cache", action="store_true", help="rebuild the image even if an identical one exists"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="say more, show tracebacks")


def _building(p: argparse.ArgumentParser) -> None:
    _base(p)
    p.add_argument(
        "-d",
        "--dir",
        action="append",
        default=[],
        dest="dirs",
        metavar="DIR",
        help="extra folder of the project to copy into the image; repeatable",
    )
    p.add_argument("module", help="script (train.py), module (trainer.train) or other file to run")


def _executing(p: argparse.ArgumentParser) -> None:
    _building(p)
    p.add_argument(
        "--experiment_config",
        metavar="FILE",
        help="experiment config (JSON) to expand into jobs, or 'stdin'",
    )
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="show the jobs that would run; build, run and record nothing",
    )
    p.add_argument(
        "--max_sweep",
        type=positive_int,
        default=DEFAULT_MAX_SWEEP,
        metavar="N",
        help=f"refuse an experiment config of more than N jobs (default {DEFAULT_MAX_SWEEP})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="caliban",
        description="Package research code in a Docker image and run it: locally, on Vertex AI "
        "custom jobs or on Kubernetes, one job or a sweep of hundreds.",
        epilog="Arguments after `--` are passed to your script. `caliban COMMAND --help` for more.",
    )
    parser.add_argument("--version", action="version", version=f"caliban {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    p = sub.add_parser("build", help="build the project's image and exit")
    _building(p)
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser("run", help="run the project locally: one job or a whole sweep")
    _executing(p)
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
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("status", help="show recorded jobs and their current state")
    p.add_argument("--xgroup", help="show this experiment group")
    p.add_argument(
        "--max_jobs",
        type=non_negative_int,
        metavar="N",
        help="jobs to show (default 8; with --xgroup: per experiment, default 1; 0 = all)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("stop", help="stop running jobs")
    p.add_argument("--xgroup", help="only jobs of this experiment group")
    p.add_argument("--dry_run", action="store_true", help="list what would be stopped")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(handler=cmd_stop)

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
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(handler=cmd_resubmit)

    p = sub.add_parser("logs", help="print the output of a job")
    p.add_argument("job_id", help="job id, or its last 8 characters as `caliban status` shows")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing while it runs")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(handler=cmd_logs)
    from caliban.cli import cloud as cli_cloud
    from caliban.cli import cluster as cli_cluster
    from caliban.cli import config as cli_config
    from caliban.cli import dev as cli_dev

    cli_dev.register(sub)
    cli_cloud.register(sub)
    cli_cluster.register(sub)
    cli_config.register(sub)
    return parser


# -- running commands -------------------------------------------------------------------------


def _sink(ns: argparse.Namespace, **kwargs: Any) -> ConsoleSink:
    from caliban.cli.ui import ConsoleSink

    return ConsoleSink(verbose=getattr(ns, "verbose", False), **kwargs)


def _session(ns: argparse.Namespace, sink: ConsoleSink) -> Session:
    from caliban.session import Session

    session = Session(sink=sink)
    session.quota_project = getattr(ns, "quota_project", None)
    return session


def _drive(
    ns: argparse.Namespace,
    sink: ConsoleSink,
    work: Callable[[Session], Awaitable[T]],
) -> tuple[T | None, bool]:
    """Run ``work`` in a session; the first SIGINT/SIGTERM cancels it (cleanup still
    runs), the second makes cleanup skip grace periods. Returns (result, interrupted)."""
    import signal

    import anyio

    outcome: list[T] = []
    interrupted = False

    async def main() -> None:
        nonlocal interrupted
        async with _session(ns, sink) as session, anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        if not interrupted:
                            interrupted = True
                            sink.err.print(
                                "[yellow]stopping: cleaning up (press Ctrl-C again to "
                                "skip grace periods)[/]"
                            )
                            work_scope.cancel()
                        else:
                            session.force.set()

            tg.start_soon(watch)
            with anyio.CancelScope() as work_scope:
                try:
                    outcome.append(await work(session))
                finally:
                    sink.close()
            tg.cancel_scope.cancel()

    anyio.run(main)
    return (outcome[0] if outcome else None), interrupted


def _execute(
    ns: argparse.Namespace, work: Callable[[Session], Awaitable[T]], sink: ConsoleSink | None = None
) -> tuple[T | None, int | None]:
    """Run and translate failures; returns (result, exit code if it already failed)."""
    sink = sink or _sink(ns)
    try:
        result, interrupted = _drive(ns, sink, work)
    except CalibanError as exc:
        _report(exc, ns)
        return None, exc.exit_code
    except BaseExceptionGroup as group:
        # A task group raises its children's errors together; report the first
        # one of ours (the others are usually its consequences).
        first = _first(group)
        if first is None:
            raise
        _report(first, ns)
        return None, first.exit_code
    except KeyboardInterrupt:
        return None, EXIT_INTERRUPTED
    if interrupted:
        return result, EXIT_INTERRUPTED
    return result, None


def _first(group: BaseExceptionGroup[BaseException]) -> CalibanError | None:
    for exc in group.exceptions:
        if isinstance(exc, CalibanError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc)
            if found is not None:
                return found
    return None


def _report(exc: CalibanError, ns: argparse.Namespace) -> None:
    from caliban.cli.ui import print_error

    if getattr(ns, "verbose", False):
        import traceback

        traceback.print_exception(exc)
    print_error(str(exc))


def _project(ns: argparse.Namespace, *, entry: str | None) -> Any:
    from caliban.options import ProjectOptions

    return ProjectOptions(
        folder=Path.cwd(),
        entry=entry,
        use_gpu=ns.use_gpu,
        extra_dirs=tuple(ns.dirs) if hasattr(ns, "dirs") else (),
        extras=tuple(ns.extras),
        no_cache=ns.no_cache,
        image_id=getattr(ns, "image_id", None),
    )


def _experiments(ns: argparse.Namespace) -> object | None:
    """Load and validate the experiment config before anything starts."""
    if not getattr(ns, "experiment_config", None):
        return None
    from caliban.core import experiment

    return experiment.load(ns.experiment_config)


def _summary(sink: ConsoleSink, result: RunResult) -> int:
    if result.launched is not None:
        parts = [f"{n} {what}" for n, what in result.tally()]
    else:
        parts = [f"{n} {state.value.lower()}" for state, n in sorted(result.counts.items())]
        if result.skipped:
            parts.append(f"{result.skipped} skipped")
    style = "green" if result.ok else "bold red"
    sink.console.print(f"[{style}]{len(result.jobs)} job(s): {', '.join(parts) or 'none'}[/]")
    import shlex

    from rich.markup import escape

    hint = escape(f"caliban status --xgroup {shlex.quote(result.xgroup)}")
    sink.console.print(f"[dim]{hint}[/]")
    return EXIT_OK if result.ok else EXIT_FAILURE


def _no_cloud_key(ns: argparse.Namespace) -> None:
    # Accepted by the parser for the original's scripts, but local images and
    # containers get no credentials: saying so beats ignoring the flag.
    if getattr(ns, "cloud_key", None):
        raise ValidationError(
            f"--cloud_key is not used by `caliban {ns.command}`: local jobs get no "
            "Google credentials; drop the flag (it is for `cloud` and `cluster`)"
        )


def cmd_build(ns: argparse.Namespace) -> int:
    _no_cloud_key(ns)
    project = _project(ns, entry=ns.module)

    async def work(session: Session) -> Any:
        return await session.build(project)

    built, code = _execute(ns, work)
    if code is not None or built is None:
        return code if code is not None else EXIT_FAILURE
    print(built.tag)
    return EXIT_OK


def cmd_run(ns: argparse.Namespace) -> int:
    from caliban.options import RunRequest
    from caliban.platforms.local.gpus import parse_ids

    _no_cloud_key(ns)
    request = RunRequest(
        project=_project(ns, entry=ns.module),
        experiments=_experiments(ns),
        script_args=tuple(ns.script_args),
        xgroup=ns.xgroup,
        max_parallel=ns.max_parallel,
        gpus_per_job=ns.gpus_per_job,
        gpu_ids=parse_ids(ns.gpu_ids) if ns.gpu_ids else None,
        cpus_per_job=ns.cpus_per_job,
        docker_run_args=_docker_run_args(ns.docker_run_args),
        docker_create_json=_docker_create_json(ns.docker_create_json),
        dry_run=ns.dry_run,
        max_sweep=ns.max_sweep,
    )
    sink = _sink(ns)

    async def work(session: Session) -> RunResult:
        return await session.run(request)

    result, code = _execute(ns, work, sink)
    if result is None or result.dry_run:
        return code if code is not None else EXIT_OK
    summary = _summary(sink, result)
    return code if code is not None else summary


def _docker_run_args(text: str | None) -> tuple[str, ...]:
    import shlex

    if not text:
        return ()
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        from caliban.errors import ValidationError

        raise ValidationError(f"--docker_run_args: {exc}") from exc


def _docker_create_json(path: str | None) -> dict[str, Any] | None:
    from caliban.core.createjson import read_fragment

    return read_fragment(path) if path else None


def cmd_status(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> list[JobRecord]:
        return await session.status(xgroup=ns.xgroup, max_jobs=ns.max_jobs)

    sink = _sink(ns)
    jobs, code = _execute(ns, work, sink)
    if jobs is None:
        return code if code is not None else EXIT_FAILURE
    from caliban.cli.ui import dumps_jobs, jobs_table

    if ns.json:
        print(dumps_jobs(jobs))
    elif not jobs:
        sink.console.print("no jobs found")
    else:
        sink.console.print(jobs_table(jobs))
    return code if code is not None else EXIT_OK


async def _confirm(question: str, jobs: Sequence[JobRecord], sink: ConsoleSink) -> bool:
    import anyio

    from caliban.cli.ui import jobs_table

    sink.console.print(jobs_table(jobs))
    answer: str = await anyio.to_thread.run_sync(_ask, question, abandon_on_cancel=True)
    return answer.strip().lower() in ("y", "yes")


def _ask(question: str) -> str:
    try:
        return input(question)
    except EOFError:
        return ""


def cmd_stop(ns: argparse.Namespace) -> int:
    sink = _sink(ns)

    async def confirm(jobs: Sequence[JobRecord]) -> bool:
        return ns.yes or await _confirm(f"Stop these {len(jobs)} job(s)? [y/N] ", jobs, sink)

    async def work(session: Session) -> list[JobRecord]:
        return await session.stop(xgroup=ns.xgroup, dry_run=ns.dry_run, confirm=confirm)

    jobs, code = _execute(ns, work, sink)
    if code is not None:
        return code
    from caliban.cli.ui import jobs_table

    if not jobs:
        sink.console.print("no running jobs to stop")
    elif ns.dry_run:
        sink.console.print(jobs_table(jobs))
        sink.console.print(f"dry run: {len(jobs)} job(s) would be stopped")
    else:
        sink.console.print(jobs_table(jobs))
    return EXIT_OK


def cmd_resubmit(ns: argparse.Namespace) -> int:
    sink = _sink(ns)

    async def confirm(jobs: Sequence[JobRecord]) -> bool:
        return ns.yes or await _confirm(f"Resubmit these {len(jobs)} job(s)? [y/N] ", jobs, sink)

    async def work(session: Session) -> RunResult:
        session.cloud_key = ns.cloud_key
        return await session.resubmit(
            xgroup=ns.xgroup,
            all_jobs=ns.all_jobs,
            dry_run=ns.dry_run,
            confirm=confirm,
            max_parallel=ns.max_parallel,
        )

    result, code = _execute(ns, work, sink)
    if result is None:
        return code if code is not None else EXIT_FAILURE
    from caliban.cli.ui import jobs_table

    if result.dry_run:
        if result.jobs:
            sink.console.print(jobs_table(result.jobs))
        sink.console.print(f"dry run: {len(result.jobs)} job(s) would be resubmitted")
        return EXIT_OK
    if not result.jobs:
        sink.console.print(f"nothing to resubmit in {ns.xgroup}")
        return code if code is not None else EXIT_OK
    summary = _summary(sink, result)
    return code if code is not None else summary


def cmd_logs(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> None:
        async for chunk in session.logs(ns.job_id, follow=ns.follow):
            sys.stdout.write(chunk)
        sys.stdout.flush()

    _, code = _execute(ns, work)
    return code if code is not None else EXIT_OK


# -- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    caliban_args, script_args = _split_script_args(args)
    parser = build_parser()
    ns, extra = parser.parse_known_args(caliban_args)
    if extra:
        module = getattr(ns, "module", None)
        # An unknown flag before the script is a caliban flag misspelt, not a
        # script argument in the wrong place.
        module_at = max(
            (i for i, a in enumerate(caliban_args) if a == module), default=len(caliban_args)
        )
        unknown = [a for a in extra if a.startswith("-") and caliban_args.index(a) < module_at]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if module is not None:
            parser.error(
                f"unexpected arguments {' '.join(extra)!r} after {module!r}: put caliban flags "
                f"before the script and pass script arguments after `--`, e.g. "
                f"caliban {ns.command} ... {module} -- {' '.join(extra)}"
            )
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    ns.script_args = script_args
    if script_args and not hasattr(ns, "module"):
        parser.error(f"`caliban {ns.command}` takes no script arguments after `--`")
    try:
        code: int = ns.handler(ns)
    except CalibanError as exc:
        _report(exc, ns)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `caliban status --json | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return EXIT_FAILURE
    return code


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
