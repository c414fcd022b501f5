"""``caliban build``, ``run``, ``status``, ``stop``, ``resubmit`` and ``logs``: the calls they make.

Their flags are assembled in :mod:`caliban.cli.main`; these handlers turn the
parsed flags into requests and the results into text and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from caliban.cli import inputs, running
from caliban.errors import EXIT_FAILURE, EXIT_OK, ValidationError

if TYPE_CHECKING:
    from caliban.session import RunResult, Session
    from caliban.spec import JobRecord
    from caliban.sweep.tails import FailedOutput


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
    project = inputs.project_options(ns, entry=ns.module)

    async def work(session: Session) -> Any:
        return await session.build(project)

    built, code = running.execute(ns, work)
    if code is not None or built is None:
        return code if code is not None else EXIT_FAILURE
    print(built.tag)
    return EXIT_OK


def cmd_run(ns: argparse.Namespace) -> int:
    from caliban.options import RunRequest
    from caliban.platforms.local.gpus import parse_ids

    _no_cloud_key(ns)
    request = RunRequest(
        project=inputs.project_options(ns, entry=ns.module),
        experiments=inputs.experiments(ns),
        script_args=tuple(ns.script_args),
        xgroup=ns.xgroup,
        max_parallel=ns.max_parallel,
        gpus_per_job=ns.gpus_per_job,
        gpu_ids=parse_ids(ns.gpu_ids) if ns.gpu_ids else None,
        cpus_per_job=ns.cpus_per_job,
        docker_run_args=inputs.docker_run_args(ns.docker_run_args),
        docker_create_json=inputs.docker_create_json(ns.docker_create_json),
        dry_run=ns.dry_run,
        max_sweep=ns.max_sweep,
    )
    sink = running.make_sink(ns)

    async def work(session: Session) -> RunResult:
        return await session.run(request)

    result, code = running.execute(ns, work, sink)
    if result is None or result.dry_run:
        return code if code is not None else EXIT_OK
    summary = running.summary(sink, result, ns)
    return code if code is not None else summary


def cmd_status(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> list[JobRecord]:
        return await session.status(xgroup=ns.xgroup, max_jobs=ns.max_jobs)

    sink = running.make_sink(ns)
    jobs, code = running.execute(ns, work, sink)
    if jobs is None:
        return code if code is not None else EXIT_FAILURE
    from caliban.cli.joblist import show_jobs

    show_jobs(jobs, sink.console, as_json=ns.json)
    return code if code is not None else EXIT_OK


def cmd_watch(ns: argparse.Namespace) -> int:
    sink = running.make_sink(ns)

    async def work(session: Session) -> RunResult:
        session.cloud_key = ns.cloud_key
        return await session.watch(
            xgroup=ns.xgroup, interval=ns.interval, max_recoveries=ns.max_recoveries
        )

    result, code = running.execute(ns, work, sink)
    if result is None:
        return code if code is not None else EXIT_FAILURE
    summary = running.summary(sink, result, ns)
    return code if code is not None else summary


def cmd_stop(ns: argparse.Namespace) -> int:
    sink = running.make_sink(ns)

    declined = False

    async def confirm(jobs: Sequence[JobRecord]) -> bool:
        nonlocal declined
        if ns.yes:
            return True
        if not running.can_ask():
            raise running.no_terminal("stop", len(jobs), "stop")
        declined = not await running.confirm(f"Stop these {len(jobs)} job(s)? [y/N] ", jobs, sink)
        return not declined

    async def work(session: Session) -> list[JobRecord]:
        return await session.stop(xgroup=ns.xgroup, dry_run=ns.dry_run, confirm=confirm)

    jobs, code = running.execute(ns, work, sink)
    if code is not None:
        return code
    # Listed as status lists them: rich on a terminal only.
    from caliban.cli.joblist import show_jobs

    if declined:
        sink.console.print("not stopped: the answer was not yes")
    elif not jobs:
        sink.console.print("no running jobs to stop")
    elif ns.dry_run:
        show_jobs(jobs, sink.console, as_json=False)
        sink.console.print(f"dry run: {len(jobs)} job(s) would be stopped")
    else:
        show_jobs(jobs, sink.console, as_json=False)
    return EXIT_OK


def cmd_resubmit(ns: argparse.Namespace) -> int:
    sink = running.make_sink(ns)

    declined = False

    async def confirm(jobs: Sequence[JobRecord]) -> bool:
        nonlocal declined
        if ns.yes:
            return True
        if not running.can_ask():
            raise running.no_terminal("resubmit", len(jobs), "resubmit")
        question = f"Resubmit these {len(jobs)} job(s)? [y/N] "
        declined = not await running.confirm(question, jobs, sink)
        return not declined

    async def work(session: Session) -> RunResult:
        session.cloud_key = ns.cloud_key
        return await session.resubmit(
            xgroup=ns.xgroup,
            all_jobs=ns.all_jobs,
            dry_run=ns.dry_run,
            confirm=confirm,
            max_parallel=ns.max_parallel,
        )

    result, code = running.execute(ns, work, sink)
    if result is None:
        return code if code is not None else EXIT_FAILURE
    from caliban.cli.ui import jobs_table

    if result.dry_run:
        if result.jobs:
            sink.console.print(jobs_table(result.jobs))
        sink.console.print(f"dry run: {len(result.jobs)} job(s) would be resubmitted")
        return EXIT_OK
    if declined:
        sink.console.print("nothing resubmitted: the answer was not yes")
        return code if code is not None else EXIT_OK
    if not result.jobs:
        sink.console.print(f"nothing to resubmit in {ns.xgroup}")
        return code if code is not None else EXIT_OK
    summary = running.summary(sink, result)
    return code if code is not None else summary


def _logs_args(ns: argparse.Namespace) -> None:
    if ns.failed:
        if not ns.xgroup:
            raise ValidationError("--failed needs --xgroup X: the experiment group to read")
        if ns.job_id or ns.follow:
            raise ValidationError("--failed reads a whole group: give no job id and no --follow")
    elif ns.xgroup or ns.tail:
        raise ValidationError(
            "--xgroup and --tail go with --failed (caliban logs --xgroup X --failed)"
        )
    elif not ns.job_id:
        raise ValidationError("caliban logs needs a job id, or --xgroup X --failed")


def cmd_logs(ns: argparse.Namespace) -> int:
    _logs_args(ns)
    if ns.failed:
        return _failed_logs(ns)

    async def work(session: Session) -> None:
        async for chunk in session.logs(ns.job_id, follow=ns.follow):
            sys.stdout.write(chunk)
        sys.stdout.flush()

    _, code = running.execute(ns, work)
    return code if code is not None else EXIT_OK


def _failed_logs(ns: argparse.Namespace) -> int:
    sink = running.make_sink(ns)

    async def work(session: Session) -> list[FailedOutput]:
        return await session.failed_logs(ns.xgroup, lines=ns.tail or 20)

    found, code = running.execute(ns, work, sink)
    if found is None:
        return code if code is not None else EXIT_FAILURE
    if not found:
        sink.console.print(f"no failed jobs in {ns.xgroup}")
    for block in found:
        sys.stdout.write(failed_block(block))
    sys.stdout.flush()
    return code if code is not None else EXIT_OK


def failed_block(block: FailedOutput) -> str:
    """One failed job as text: a header naming it and its likely cause, then its last lines."""
    job = block.job
    why = job.message or (f"exit code {job.exit_code}" if job.exit_code is not None else "")
    cause = f"  likely cause: {block.cause.text}" if block.cause else ""
    head = f"==> {block.label} {job.platform.value} {why}{cause}".rstrip()
    body = [f"    ({block.error})"] if block.error else list(block.lines)
    return "\n".join([head, *body, ""]) + "\n"
