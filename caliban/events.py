"""Typed events the core emits while it works; only the UI turns them into text.

A sink is any callable taking an event. It is called from the event loop and
must not block: the rich UI only updates in-memory state and prints lines.
Library users can pass their own sink (or none) to :class:`caliban.Session`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from caliban.spec import JobState


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Notice(Event):
    """A line meant for the user: what happened, or what to do next."""

    text: str
    # info | warning | error | debug | status; status is about the command's progress
    # rather than its output, so it goes to stderr beside a Document on stdout.
    level: str = "info"


@dataclass(frozen=True)
class Document(Event):
    """Output for programs: a JSON or YAML document (``--dry_run`` request bodies,
    manifests), shown exactly as given on stdout, so it can be piped to jq or kubectl."""

    text: str


@dataclass(frozen=True)
class BuildStarted(Event):
    tag: str
    context_files: int
    context_bytes: int


@dataclass(frozen=True)
class ContextLeftOut(Event):
    """Credential files the build context did not send (``text`` is the line to show)."""

    paths: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class BuildLog(Event):
    line: str


@dataclass(frozen=True)
class BuildSkipped(Event):
    """An image with the same content hash already exists: nothing to build."""

    tag: str


@dataclass(frozen=True)
class BuildStep(Event):
    """The daemon began Dockerfile step ``step`` of ``total``; ``cached`` steps so far
    were layer cache hits (a hit on the current step sends this event again)."""

    step: int
    total: int
    cached: int
    instruction: str


@dataclass(frozen=True)
class BuildFailed(Event):
    """The build stopped with an error (raised as a BuildError right after this event);
    a UI that held the log back shows it now."""

    tag: str
    step: str | None = None


@dataclass(frozen=True)
class BuildFinished(Event):
    tag: str
    image_id: str
    seconds: float
    steps: int = 0
    cached: int = 0


@dataclass(frozen=True)
class PushProgress(Event):
    image: str
    status: str
    layer: str | None = None


@dataclass(frozen=True)
class JobsPlanned(Event):
    """The sweep is recorded; ``skipped`` jobs already succeeded or are running."""

    xgroup: str
    total: int
    to_run: int
    skipped: int
    # Jobs go to a remote platform: accepted there is as far as this command follows them.
    remote: bool = False


@dataclass(frozen=True)
class JobStateChanged(Event):
    job_id: str
    label: str  # short human name, e.g. "3/16"
    state: JobState
    exit_code: int | None = None
    detail: str | None = None
    argv: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class JobOutput(Event):
    """One line of a job's output, made safe to print (see :mod:`caliban.core.output`).

    Not every line becomes an event: a flood is thinned out to a readable rate
    (:class:`JobOutputSkipped` says how much was left out); the job's log file
    has every byte.
    """

    job_id: str
    label: str
    line: str


@dataclass(frozen=True)
class JobOutputSkipped(Event):
    """``count`` lines of a job's output were left out here; they are in ``log_path``."""

    job_id: str
    label: str
    count: int
    log_path: str | None = None


@dataclass(frozen=True)
class RetryScheduled(Event):
    """A platform call failed in a way worth retrying; the next try is in ``delay`` s."""

    job_id: str | None
    attempt: int
    delay: float
    reason: str


Sink = Callable[[Event], None]


def discard(event: Event) -> None:
    """The default sink: library users who pass nothing see nothing."""
