"""``caliban show JOB``: one job as recorded, where its code came from, and how to run it again."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from caliban.cli import running
from caliban.cli.flags import json_flag
from caliban.errors import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from caliban.session import Session
    from caliban.spec import JobRecord


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("show", help="one job: its state, provenance and the command to rerun it")
    p.add_argument("job_id", help="job id, or its last 8 characters as `caliban status` shows")
    json_flag(p, "the job, its provenance and the rerun command")
    p.set_defaults(handler=cmd_show)


def rerun(job: JobRecord) -> str | None:
    from caliban.core.rerun import rerun_command

    origin = job.provenance or {}
    command = origin.get("command")
    entry = origin.get("entry")
    if not isinstance(command, list):
        return None
    return rerun_command(
        [str(c) for c in command],
        entry=str(entry) if entry is not None else None,
        image=job.image,
        args=job.args,
        platform=job.platform.value,
    )


def cmd_show(ns: argparse.Namespace) -> int:
    async def work(session: Session) -> JobRecord:
        return await session.job(ns.job_id)

    sink = running.make_sink(ns)
    job, code = running.execute(ns, work, sink)
    if job is None:
        return code if code is not None else EXIT_FAILURE
    from caliban.cli.joblist import job_json
    from caliban.cli.ui import provenance_lines

    again = rerun(job)
    if ns.json:
        sys.stdout.write(json.dumps({**job_json(job), "rerun": again}, indent=2) + "\n")
        return EXIT_OK
    for line in provenance_lines(job, again):
        sink.console.print(line)
    return EXIT_OK
