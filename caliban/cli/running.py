"""Running a command's work in a session: console, signals, errors to exit codes.

Every subcommand goes through :func:`execute`, so a Ctrl-C, a ``CalibanError``
or one buried in a task group ends the same way whichever command raised it.
anyio, rich and the session are imported inside the functions, when a command
runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from caliban.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, CalibanError

if sys.version_info < (3, 11):  # the builtin arrived in 3.11; anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from caliban.cli.ui import ConsoleSink
    from caliban.session import RunResult, Session
    from caliban.spec import JobRecord

T = TypeVar("T")


def make_sink(ns: argparse.Namespace, **kwargs: Any) -> ConsoleSink:
    from caliban.cli.ui import ConsoleSink, open_console

    if getattr(ns, "json", False) and "console" not in kwargs:
        # stdout carries the one JSON document; everything else goes to stderr.
        kwargs["console"] = open_console(stderr=True)
    return ConsoleSink(
        verbose=getattr(ns, "verbose", False), quiet=getattr(ns, "quiet", False), **kwargs
    )


def open_session(ns: argparse.Namespace, sink: ConsoleSink) -> Session:
    from caliban.session import Session

    session = Session(sink=sink)
    session.quota_project = getattr(ns, "quota_project", None)
    argv = getattr(ns, "argv", None)
    session.argv = ("caliban", *argv) if argv is not None else None
    return session


def drive(
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
        async with open_session(ns, sink) as session, anyio.create_task_group() as tg:

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
            tg.start_soon(sink.ticker)
            with anyio.CancelScope() as work_scope:
                try:
                    outcome.append(await work(session))
                finally:
                    sink.close()
            tg.cancel_scope.cancel()

    anyio.run(main)
    return (outcome[0] if outcome else None), interrupted


def execute(
    ns: argparse.Namespace, work: Callable[[Session], Awaitable[T]], sink: ConsoleSink | None = None
) -> tuple[T | None, int | None]:
    """Run and translate failures; returns (result, exit code if it already failed)."""
    sink = sink or make_sink(ns)
    try:
        result, interrupted = drive(ns, sink, work)
    except CalibanError as exc:
        report(exc, ns)
        return None, exc.exit_code
    except BaseExceptionGroup as group:
        # A task group raises its children's errors together; report the first
        # one of ours (the others are usually its consequences).
        first = _first(group)
        if first is None:
            raise
        report(first, ns)
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


def report(exc: CalibanError, ns: argparse.Namespace) -> None:
    from caliban.cli.ui import print_error

    if getattr(ns, "verbose", False):
        import traceback

        traceback.print_exception(exc)
    print_error(str(exc))


def summary(sink: ConsoleSink, result: RunResult, ns: argparse.Namespace | None = None) -> int:
    """Print a sweep's tally and where to look next; the exit code it deserves.

    With ``--json`` the tally is one JSON object on stdout instead, for scripts.
    """
    if ns is not None and getattr(ns, "json", False):
        import json

        from caliban.cli.ui import summary_json

        sys.stdout.write(json.dumps(summary_json(result), indent=2) + "\n")
        sys.stdout.flush()
        return EXIT_OK if result.ok else EXIT_FAILURE
    if result.launched is not None:
        parts = [f"{n} {what}" for n, what in result.tally()]
    else:
        parts = [f"{n} {state.value.lower()}" for state, n in sorted(result.counts.items())]
        if result.skipped:
            parts.append(f"{result.skipped} skipped")
    style = "green" if result.ok else "bold red"
    sink.console.print(f"[{style}]{len(result.jobs)} job(s): {', '.join(parts) or 'none'}[/]")
    import shlex

    from caliban.cli.plain import escape

    hint = escape(f"caliban status --xgroup {shlex.quote(result.xgroup)}")
    sink.console.print(f"[dim]{hint}[/]")
    return EXIT_OK if result.ok else EXIT_FAILURE


def can_ask() -> bool:
    """Whether a question can be answered: someone at a terminal on stdin."""
    return sys.stdin is not None and sys.stdin.isatty()


def no_terminal(command: str, count: int, verb: str) -> CalibanError:
    """The error for a question nobody can answer (a script, CI, cron)."""
    from caliban.errors import ValidationError

    return ValidationError(
        f"`caliban {command}` would {verb} {count} job(s) but has no terminal to ask on: "
        "pass --yes to go ahead, or --dry_run to list them"
    )


async def confirm(question: str, jobs: Sequence[JobRecord], sink: ConsoleSink) -> bool:
    """Show the jobs, ask; anything but y/yes (or no terminal) is a no."""
    import anyio

    from caliban.cli.ui import jobs_table

    sink.console.print(jobs_table(jobs))
    answer: str = await anyio.to_thread.run_sync(ask, question, abandon_on_cancel=True)
    return answer.strip().lower() in ("y", "yes")


def ask(question: str) -> str:
    try:
        return input(question)
    except EOFError:
        return ""
