"""A build as one progress line, its log held back unless it fails or -v asks;
plain progress lines when output is not a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from caliban.adapters.build import _StepTracker
from caliban.cli.ui import ConsoleSink, progress_interval_from
from caliban.errors import ValidationError
from caliban.events import (
    BuildFailed,
    BuildFinished,
    BuildLog,
    BuildStarted,
    JobsPlanned,
    JobStateChanged,
)
from caliban.spec import JobState

LOG = [
    "Step 1/3 : FROM base",
    " ---> 1234",
    "Step 2/3 : COPY . .",
    " ---> Using cache",
    " ---> 5678",
    "Step 3/3 : RUN pip install -r requirements.txt",
    "Collecting numpy",
]


def _sink(*, terminal: bool, verbose: bool = False) -> tuple[ConsoleSink, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=terminal, color_system=None)
    return ConsoleSink(console, verbose=verbose, progress_interval=0), out


def _build(sink: ConsoleSink, lines: list[str] = LOG) -> None:
    tracker = _StepTracker()
    sink(BuildStarted("img:1", 3, 2048))
    for line in lines:
        step = tracker.note(line)
        sink(BuildLog(line))
        if step is not None:
            sink(step)


def test_the_tracker_counts_steps_and_cache_hits() -> None:
    tracker = _StepTracker()
    steps = [s for line in LOG if (s := tracker.note(line)) is not None]
    assert [(s.step, s.total, s.cached) for s in steps] == [
        (1, 3, 0),
        (2, 3, 0),
        (2, 3, 1),
        (3, 3, 1),
    ]
    assert steps[-1].instruction == "RUN pip install -r requirements.txt"
    assert tracker.step == "step 3/3 (RUN pip install -r requirements.txt)"


def test_a_terminal_sees_one_live_line_and_no_log() -> None:
    sink, out = _sink(terminal=True)
    _build(sink)
    assert sink._build_line is not None
    line = sink._build_text().plain
    assert line.startswith("building image: step 3/3 (1 cached)")
    sink(BuildFinished("img:1", "sha256:ab", 2.5, steps=3, cached=1))
    assert sink._build_line is None
    text = out.getvalue()
    assert "Collecting numpy" not in text and "Step 2/3" not in text
    assert "built img:1 in 2.5s, 3 steps, 1 cached" in text


def test_a_failed_build_shows_its_whole_log() -> None:
    for terminal in (True, False):
        sink, out = _sink(terminal=terminal)
        _build(sink)
        sink(BuildFailed("img:1", "step 3/3 (RUN pip install -r requirements.txt)"))
        text = out.getvalue()
        assert all(line.strip() in text for line in LOG), terminal
        assert sink._build_line is None


def test_verbose_prints_the_log_as_it_comes() -> None:
    sink, out = _sink(terminal=True, verbose=True)
    _build(sink)
    assert sink._build_line is None
    assert "Collecting numpy" in out.getvalue()
    sink(BuildFailed("img:1"))
    assert out.getvalue().count("Collecting numpy") == 1


def test_off_a_terminal_a_build_reports_its_step_in_plain_lines() -> None:
    sink, out = _sink(terminal=False)
    _build(sink, LOG[:4])
    sink.tick()
    text = out.getvalue()
    assert "building image: step 2/3 (1 cached)\n" in text
    assert "Step 1/3" not in text and "\x1b" not in text
    sink(BuildFinished("img:1", "sha256:ab", 1.0, steps=3, cached=1))
    before = out.getvalue()
    sink.tick()
    assert out.getvalue() == before  # nothing under way: no line


def _change(job: str, state: JobState) -> JobStateChanged:
    return JobStateChanged(job, f"{job}/4", state)


def test_plain_progress_line_counts_a_local_sweep() -> None:
    sink, out = _sink(terminal=False)
    sink(JobsPlanned("g", total=5, to_run=4, skipped=1))
    sink(_change("1", JobState.RUNNING))
    sink(_change("2", JobState.RUNNING))
    sink(_change("1", JobState.SUCCEEDED))
    assert sink.progress_line() == "1/4 done, 1 running, 0 failed"
    sink(_change("2", JobState.FAILED))
    sink(_change("3", JobState.RUNNING))
    sink.tick()
    assert out.getvalue().splitlines()[-1] == "2/4 done, 1 running, 1 failed"
    sink(_change("3", JobState.SUCCEEDED))
    sink(_change("4", JobState.STOPPED))
    sink.close()  # the final counts, whatever the interval
    assert out.getvalue().splitlines()[-1] == "4/4 done, 0 running, 1 failed, 1 stopped"


def test_plain_progress_line_counts_a_remote_fanout() -> None:
    sink, _ = _sink(terminal=False)
    sink(JobsPlanned("g", total=3, to_run=3, skipped=0, remote=True))
    sink(_change("1", JobState.SUBMITTED))
    sink(_change("2", JobState.FAILED))
    assert sink.progress_line() == "2/3 submitted, 1 accepted, 1 failed"


def test_a_terminal_or_quiet_gets_no_plain_lines() -> None:
    sink, out = _sink(terminal=True)
    sink(JobsPlanned("g", total=2, to_run=2, skipped=0))
    before = out.getvalue()
    sink.tick()
    assert out.getvalue() == before
    sink.close()
    quiet = ConsoleSink(Console(file=io.StringIO()), quiet=True)
    quiet(JobsPlanned("g", total=2, to_run=2, skipped=0))
    quiet.tick()
    assert quiet.console.file.getvalue() == ""  # type: ignore[attr-defined]


def test_the_interval_variable() -> None:
    assert progress_interval_from({}) == 10.0
    assert progress_interval_from({"CALIBAN_PROGRESS_INTERVAL": "0.5"}) == 0.5
    assert progress_interval_from({"CALIBAN_PROGRESS_INTERVAL": "0"}) == 0.0
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(ValidationError, match="CALIBAN_PROGRESS_INTERVAL"):
            progress_interval_from({"CALIBAN_PROGRESS_INTERVAL": bad})
