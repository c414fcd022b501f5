"""Turning core events into terminal output with rich. The only module that prints.

On a terminal a live line shows the sweep's progress (queued, running,
succeeded, failed, retrying) while job output scrolls above it, each line
prefixed with a short job label; an image build is one live line too (step
N/M, cache hits), its log held back unless it fails or ``-v`` asks for it.
Piped or redirected, output is plain lines with no cursor tricks, so logs stay
readable: a long build or sweep says where it is in one plain line every
``CALIBAN_PROGRESS_INTERVAL`` seconds instead.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, cast

from caliban import events as ev
from caliban.cli.cells import platform_cell
from caliban.cli.plain import PlainConsole, escape, is_terminal
from caliban.cli.plain import Styled as Text
from caliban.core.output import sanitize_text
from caliban.spec import JobRecord, JobState

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress
    from rich.text import Text as RichText

    from caliban.sweep.engine import RunResult

    # What the sink writes to: rich on a terminal, plain text (no rich import) elsewhere.
    AnyConsole = Console | PlainConsole

_STATE_STYLE = {
    JobState.PLANNED: "dim",
    JobState.SUBMITTED: "cyan",
    JobState.QUEUED: "bright_cyan",
    JobState.RUNNING: "blue",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "bold red",
    JobState.STOPPED: "yellow",
    JobState.UNKNOWN: "magenta",
    JobState.CANCELLING: "yellow",
}
# Wide enough that a piped table never folds a cell, small enough to lay out quickly.
_PIPED_WIDTH = 1 << 15
_TRAILING_BLANKS = re.compile(r" +\n")
# Seconds between plain progress lines when output is not a terminal.
PROGRESS_INTERVAL_ENV = "CALIBAN_PROGRESS_INTERVAL"
_DEFAULT_INTERVAL = 10.0
_LABEL_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")


def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """The one place caliban's consoles are made.

    On a terminal rich wraps to its width. Piped or redirected, the reader is a
    program or a log file: lines are never wrapped (``soft_wrap``), tables get all
    the width they want, and trailing blanks of table cells are dropped.
    """
    from rich.console import Console

    console = Console(file=file, stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.soft_wrap = True
        if "COLUMNS" not in os.environ:
            console.width = _PIPED_WIDTH
        console.file = cast("IO[str]", _LineEnds(console.file))
    return console


class _LineEnds:
    """A text stream that drops blanks at the end of each line written to it.

    A run of blanks at the end of one write is held back until the next write
    shows whether a line break follows it.
    """

    def __init__(self, target: IO[str]) -> None:
        self._target = target
        self._held = ""

    def write(self, text: str) -> int:
        pending = self._held + text
        body = pending.rstrip(" ")
        self._held = pending[len(body) :]
        self._target.write(_TRAILING_BLANKS.sub("\n", body))
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self._target, "encoding", None) or "utf-8"


def open_console(file: IO[str] | None = None, *, stderr: bool = False) -> AnyConsole:
    """:func:`make_console` on a terminal; elsewhere a console that needs no rich."""
    target = file or (sys.stderr if stderr else sys.stdout)
    if is_terminal(target):
        return make_console(file, stderr=stderr)
    return PlainConsole(file, stderr=stderr, make_rich=lambda f, err: make_console(f, stderr=err))


class ConsoleSink:
    """An event sink that renders to a rich console."""

    def __init__(
        self,
        console: AnyConsole | None = None,
        *,
        verbose: bool = False,
        quiet: bool = False,
        show_build_log: bool | None = None,
        show_output: bool = True,
        progress_interval: float | None = None,
    ) -> None:
        self.console: AnyConsole = console or open_console()
        self.err: AnyConsole = open_console(stderr=True) if console is None else console
        self.verbose = verbose
        self.quiet = quiet
        # The daemon's log, line by line as it comes; by default only with -v
        # (a failed build shows it whole at the end either way).
        self.show_build_log = verbose if show_build_log is None else show_build_log
        self.progress_interval = (
            progress_interval_from(os.environ) if progress_interval is None else progress_interval
        )
        self.show_output = show_output
        self.counts: Counter[str] = Counter()
        self.total = 0
        # Where each job is counted, so that every state change moves exactly one
        # job between counts whatever order events come in.
        self._bucket: dict[str, str] = {}
        # Jobs waiting to retry a platform call, until their next state change.
        self._retrying: set[str] = set()
        # Remote jobs (Vertex, GKE): being accepted is as far as the bar follows them.
        self.remote = False
        self._progress: Progress | None = None
        self._task: Any = None
        self._live = self.console.is_terminal and not quiet
        # The build under way: its log so far and its last step.
        self._building: str | None = None
        self._build_log: list[str] = []
        self._build_step: ev.BuildStep | None = None
        self._build_line: Any = None  # a rich Live while a build runs on a terminal

    # -- the live progress line ------------------------------------------------------

    @property
    def accepted(self) -> int:
        c = self.counts
        return c["submitted"] + c["running"] + c["succeeded"]

    def _summary(self) -> str:
        c = self.counts
        if self.remote:
            parts = [f"[green]{self.accepted} accepted[/]", f"[dim]{c['queued']} queued[/]"]
        else:
            parts = [
                f"[dim]{c['queued']} queued[/]",
                f"[blue]{c['running']} running[/]",
                f"[green]{c['succeeded']} succeeded[/]",
            ]
            if c["submitted"]:
                parts.insert(2, f"[cyan]{c['submitted']} submitted[/]")
        if self._retrying:
            parts.append(f"[magenta]{len(self._retrying)} retrying[/]")
        if c["failed"]:
            parts.append(f"[red]{c['failed']} failed[/]")
        if c["stopped"]:
            parts.append(f"[yellow]{c['stopped']} stopped[/]")
        if c["unknown"]:
            parts.append(f"[magenta]{c['unknown']} unknown[/]")
        return " · ".join(parts)

    def start_progress(self, total: int, title: str = "jobs") -> None:
        self.total = total
        self.counts["queued"] = total
        if not self._live or total == 0:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn(f"[bold]{escape(title)}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=cast("Console", self.console),
            transient=False,
        )
        self._task = self._progress.add_task(self._summary(), total=total)
        self._progress.start()

    def _update(self) -> None:
        if self._progress is not None:
            c = self.counts
            if self.remote:
                done = self.total - c["queued"]
            else:
                done = c["succeeded"] + c["failed"] + c["stopped"]
            self._progress.update(self._task, completed=done, description=self._summary())

    def close(self) -> None:
        self._end_build()
        if self._progress is not None:
            self._update()
            self._progress.stop()
            self._progress = None
        elif self._plain_progress():
            # The last word off a terminal: the final counts, whatever the interval.
            self.tick()
        self.total = 0

    # -- plain progress, off a terminal ------------------------------------------------------

    def _plain_progress(self) -> bool:
        return not self._live and not self.quiet and (self.total > 0 or self._building is not None)

    def progress_line(self) -> str | None:
        """Where the work is, as one plain line; None when nothing is under way."""
        if self._building is not None:
            return "building image: " + _step_text(self._build_step)
        if self.total <= 0:
            return None
        c = self.counts
        if self.remote:
            parts = [
                f"{self.total - c['queued']}/{self.total} submitted",
                f"{self.accepted} accepted",
                f"{c['failed']} failed",
            ]
        else:
            done = c["succeeded"] + c["failed"] + c["stopped"]
            parts = [
                f"{done}/{self.total} done",
                f"{c['running'] + c['submitted']} running",
                f"{c['failed']} failed",
            ]
            if c["stopped"]:
                parts.append(f"{c['stopped']} stopped")
        if self._retrying:
            parts.append(f"{len(self._retrying)} retrying")
        if c["unknown"]:
            parts.append(f"{c['unknown']} unknown")
        return ", ".join(parts)

    def tick(self) -> None:
        """Print the plain progress line now, if output is plain and work is under way."""
        if self._plain_progress():
            line = self.progress_line()
            if line is not None:
                self.err.print(Text(line))

    async def ticker(self) -> None:
        """Call :meth:`tick` every ``progress_interval`` seconds until cancelled."""
        if self._live or self.quiet or self.progress_interval <= 0:
            return
        import anyio

        while True:
            await anyio.sleep(self.progress_interval)
            self.tick()

    # -- events --------------------------------------------------------------------------

    def __call__(self, event: ev.Event) -> None:
        if self.quiet and _chatter(event):
            return
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)

    def _on_Notice(self, e: ev.Notice) -> None:
        style = {"warning": "yellow", "error": "bold red", "debug": "dim"}.get(e.level, "")
        if e.level == "debug" and not self.verbose:
            return
        target = self.err if e.level in ("warning", "error", "status") else self.console
        target.print(Text(e.text, style=style))

    def _on_Document(self, e: ev.Document) -> None:
        # Verbatim: no markup, highlighting or wrapping, on a terminal too.
        self.console.out(e.text.rstrip("\n"), highlight=False)

    def _on_BuildStarted(self, e: ev.BuildStarted) -> None:
        size = e.context_bytes / 1e6
        self.console.print(
            Text(
                f"building {e.tag} ({e.context_files} files, {size:.1f} MB of context)",
                style="bold",
            )
        )
        self._building = e.tag
        self._build_log = []
        self._build_step = None
        if self._live and not self.show_build_log:
            from rich.live import Live

            self._build_line = Live(
                self._build_text(),
                console=cast("Console", self.console),
                transient=True,
                refresh_per_second=8,
            )
            self._build_line.start()

    def _build_text(self) -> Text:
        text = Text("building image: ", style="bold")
        text.append(_step_text(self._build_step))
        step = self._build_step
        if step is not None and step.instruction:
            text.append(f"  {sanitize_text(step.instruction)}", style="dim")
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text

    def _on_BuildStep(self, e: ev.BuildStep) -> None:
        self._build_step = e
        if self._build_line is not None:
            self._build_line.update(self._build_text())

    def _end_build(self) -> None:
        if self._build_line is not None:
            self._build_line.stop()
            self._build_line = None
        self._building = None
        self._build_log = []

    def _on_ContextLeftOut(self, e: ev.ContextLeftOut) -> None:
        self.err.print(Text(e.text, style="yellow"))

    def _on_BuildLog(self, e: ev.BuildLog) -> None:
        if not e.line.strip():
            return
        if self.show_build_log:
            self._print_build_line(e.line)
        elif self._building is not None:
            self._build_log.append(e.line)

    def _print_build_line(self, line: str) -> None:
        # A RUN step's output is the user's code talking: no escape sequences.
        self.console.print(Text("  " + sanitize_text(line), style="dim"))

    def _on_BuildFailed(self, e: ev.BuildFailed) -> None:
        held = self._build_log
        self._end_build()
        for line in held:
            self._print_build_line(line)

    def _on_BuildSkipped(self, e: ev.BuildSkipped) -> None:
        self.console.print(Text(f"image {e.tag} is up to date; build skipped", style="green"))

    def _on_BuildFinished(self, e: ev.BuildFinished) -> None:
        self._end_build()
        steps = f", {e.steps} steps, {e.cached} cached" if e.steps else ""
        self.console.print(Text(f"built {e.tag} in {e.seconds:.1f}s{steps}", style="green"))

    def _on_PushProgress(self, e: ev.PushProgress) -> None:
        if e.layer is None:
            self.console.print(Text(f"  {e.status}", style="dim"))
        elif self.verbose:
            self.console.print(Text(f"  {e.layer}: {e.status}", style="dim"))

    def _on_JobsPlanned(self, e: ev.JobsPlanned) -> None:
        if not self.quiet:
            self.console.print(
                f"[bold]{e.total}[/] job(s) in experiment group [bold]{escape(e.xgroup)}[/]"
                + (f", {e.skipped} already done or running" if e.skipped else "")
            )
        if self._progress is not None:
            self.close()
        self.remote = e.remote
        self._bucket.clear()
        self._retrying.clear()
        self.counts.clear()
        self.start_progress(e.to_run)

    def _move(self, job_id: str, state: JobState) -> None:
        old = self._bucket.get(job_id, "queued")
        new = state.value.lower() if state is not JobState.PLANNED else "queued"
        if old != new:
            if self.counts[old] > 0:
                self.counts[old] -= 1
            self.counts[new] += 1
            self._bucket[job_id] = new

    def _on_JobStateChanged(self, e: ev.JobStateChanged) -> None:
        state = e.state
        self._move(e.job_id, state)
        self._retrying.discard(e.job_id)
        if state is JobState.RUNNING:
            if self.verbose and e.detail:
                self.console.print(Text(f"[{e.label}] started on {e.detail}", style="dim"))
        elif state is JobState.SUBMITTED:
            if self.verbose and e.detail:
                self.console.print(Text(f"[{e.label}] submitted: {e.detail}", style="dim"))
        elif (state.terminal or state is JobState.UNKNOWN) and (
            state is not JobState.SUCCEEDED or self.verbose
        ):
            why = f" (exit code {e.exit_code})" if e.exit_code not in (None, 0) else ""
            if e.detail and not why:
                why = f" ({e.detail})"
            args = " ".join(e.argv)
            self.console.print(
                Text(f"[{e.label}] {state.value}{why} {args}".rstrip(), style=_STATE_STYLE[state])
            )
        self._update()

    def _on_JobOutput(self, e: ev.JobOutput) -> None:
        if not self.show_output:
            return
        style = _LABEL_STYLES[hash(e.job_id) % len(_LABEL_STYLES)]
        line = Text()
        line.append(f"[{e.label}] ", style=style)
        # Lines from caliban's own backends are clean already; a library user's
        # events may not be, and the terminal must not take orders from a job.
        line.append(sanitize_text(e.line))
        self.console.print(line)

    def _on_JobOutputSkipped(self, e: ev.JobOutputSkipped) -> None:
        if not self.show_output:
            return
        where = f", see {e.log_path}" if e.log_path else ""
        style = _LABEL_STYLES[hash(e.job_id) % len(_LABEL_STYLES)]
        line = Text()
        line.append(f"[{e.label}] ", style=style)
        line.append(f"… {e.count:,} lines not shown{where}", style="dim")
        self.console.print(line)

    def _on_RetryScheduled(self, e: ev.RetryScheduled) -> None:
        self.counts["retries"] += 1
        if e.job_id is not None:
            self._retrying.add(e.job_id)
        if self.verbose:
            self.err.print(
                Text(f"retry {e.attempt} in {e.delay:.1f}s: {e.reason}", style="magenta")
            )
        self._update()


def _step_text(step: ev.BuildStep | None) -> str:
    if step is None:
        return "starting"
    cached = f" ({step.cached} cached)" if step.cached else ""
    return f"step {step.step}/{step.total}{cached}"


def progress_interval_from(environ: Mapping[str, str]) -> float:
    """``CALIBAN_PROGRESS_INTERVAL`` in seconds; 0 turns the plain progress lines off."""
    raw = environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    if not raw:
        return _DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        from caliban.errors import ValidationError

        raise ValidationError(
            f"{PROGRESS_INTERVAL_ENV}={raw!r}: give the seconds between progress lines "
            "(such as 10), or 0 for none"
        )
    return value


def _chatter(event: ev.Event) -> bool:
    """What --quiet leaves out: everything but warnings, errors and failed jobs."""
    if isinstance(event, ev.Notice):
        return event.level not in ("warning", "error")
    return not isinstance(event, (ev.JobStateChanged, ev.JobsPlanned, ev.Document))


def print_error(message: str, *, file: IO[str] | None = None) -> None:
    console = open_console(file or sys.stderr)
    console.print(Text(f"caliban: {message}", style="bold red"), soft_wrap=True)


def state_text(state: JobState) -> RichText:
    """A job state in its colour, as tables show it."""
    from rich.text import Text

    return Text(state.value, style=_STATE_STYLE[state])


def jobs_table(jobs: Sequence[JobRecord]) -> RenderableType:
    """Jobs grouped by experiment group, in the order given (oldest first)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = []
    table: Table | None = None
    group = None
    for job in jobs:
        if job.xgroup != group or table is None:
            group = job.xgroup
            parts.append(Text(f"xgroup {group}", style="bold"))
            table = Table(box=None, header_style="dim", show_edge=False, padding=(0, 1))
            for name, justify in (
                ("job", "left"),
                ("#", "right"),
                ("platform", "left"),
                ("state", "left"),
                ("exit", "right"),
                ("created", "left"),
            ):
                table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
            table.add_column("args", overflow="fold")
            parts.append(table)
        table.add_row(
            job.short_id,
            str(job.index + 1),
            platform_cell(job),
            Text(job.state.value, style=_STATE_STYLE[job.state]),
            "" if job.exit_code is None else str(job.exit_code),
            job.created[:19].replace("T", " "),
            # Text, not a markup string: an argument like "[a,b]" is shown, not read as a style.
            Text(sanitize_text(" ".join(job.args))),
        )
    return Group(*parts)


def provenance_lines(job: JobRecord, rerun: str | None) -> list[Text]:
    """``caliban show``: the job, where its code came from, how to run it again."""
    origin = job.provenance or {}
    git = origin.get("git")
    rows: list[tuple[str, object]] = [
        ("job", job.job_id),
        ("xgroup", job.xgroup),
        ("platform", job.platform.value),
        ("state", job.state.value + (f" (exit {job.exit_code})" if job.exit_code else "")),
        ("args", " ".join(job.args)),
        ("image", job.image),
    ]
    if not origin:
        rows.append(("provenance", "not recorded (planned by an older caliban)"))
    else:
        if isinstance(git, dict):
            dirty = ", dirty: diff " + str(git.get("diff_sha256"))[:16] if git.get("dirty") else ""
            rows.append(
                ("git", f"{git.get('commit')} on {git.get('branch') or '(detached)'}{dirty}")
            )
        else:
            rows.append(("git", "none (not a git repository, or no git)"))
        for key in ("image_digest", "image_id", "base_image", "base_image_digest"):
            if origin.get(key):
                rows.append((key.replace("_", " "), origin[key]))
        rows.append(("caliban", origin.get("caliban_version")))
        command = origin.get("command")
        if isinstance(command, list):
            import shlex

            rows.append(("command", shlex.join(str(c) for c in command)))
    rows.append(("rerun", rerun or "unknown: the command line was not recorded"))
    width = max(len(k) for k, _ in rows)
    return [Text(f"{k:<{width}}  {v}") for k, v in rows]


def summary_json(result: RunResult) -> dict[str, object]:
    """A run's or submission's outcome, as ``--json`` prints it: one object."""
    return {
        "xgroup": result.xgroup,
        "platform": result.platform.value,
        "ok": result.ok,
        "counts": {what: n for n, what in result.tally()},
        "skipped": result.skipped,
        "jobs": [
            {
                "job_id": j.job_id,
                "short_id": j.short_id,
                "index": j.index,
                "state": j.state.value,
                "exit_code": j.exit_code,
                "platform_id": j.platform_id,
                "args": list(j.args),
            }
            for j in result.jobs
        ],
    }
