"""What the console shows while jobs are launched: counts, retries, one line per job."""

from __future__ import annotations

import io

from rich.console import Console

from caliban.cli.ui import ConsoleSink
from caliban.events import JobsPlanned, JobStateChanged, PushProgress, RetryScheduled
from caliban.spec import JobState

URL = "https://console.cloud.google.com/vertex-ai/locations/us-central1/training/1?project=p"


def _sink(*, verbose: bool = False, terminal: bool = False) -> tuple[ConsoleSink, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=terminal, color_system=None)
    return ConsoleSink(console, verbose=verbose), out


def _change(job: str, state: JobState, detail: str | None = None) -> JobStateChanged:
    return JobStateChanged(job, f"{job}/3 {job}", state, detail=detail, argv=("--i", job))


def test_remote_jobs_count_accepted_retrying_failed_unknown() -> None:
    sink, out = _sink(verbose=True)
    sink(JobsPlanned("g", total=4, to_run=4, skipped=0, remote=True))
    sink(_change("1", JobState.SUBMITTED, URL))
    sink(RetryScheduled("2", 1, 0.5, "503"))
    sink(RetryScheduled("2", 2, 1.0, "503"))
    sink(RetryScheduled("3", 1, 0.5, "lost"))
    assert "1 accepted" in sink._summary() and "2 retrying" in sink._summary()
    sink(_change("2", JobState.FAILED, "creating: boom"))
    sink(_change("3", JobState.UNKNOWN, "outcome unknown; it will be looked up again"))
    sink(_change("4", JobState.RUNNING, URL))  # found already running (a resumed sweep)
    summary = sink._summary()
    assert "2 accepted" in summary and "0 queued" in summary
    assert "1 failed" in summary and "1 unknown" in summary and "retrying" not in summary
    text = out.getvalue()
    assert f"[1/3 1] submitted: {URL}" in text
    assert "[2/3 2] FAILED (creating: boom) --i 2" in text
    assert "[3/3 3] UNKNOWN (outcome unknown" in text
    assert "retry 2 in 1.0s: 503" in text


def test_console_urls_only_in_verbose() -> None:
    sink, out = _sink()
    sink(JobsPlanned("g", total=1, to_run=1, skipped=0, remote=True))
    sink(_change("1", JobState.SUBMITTED, URL))
    assert out.getvalue().count("\n") == 1 and URL not in out.getvalue()


def test_local_jobs_move_from_queued_to_running_to_done() -> None:
    sink, _ = _sink()
    sink(JobsPlanned("g", total=3, to_run=3, skipped=0))
    sink(_change("1", JobState.RUNNING))
    sink(_change("2", JobState.RUNNING))
    assert sink.counts["queued"] == 1 and sink.counts["running"] == 2
    sink(_change("1", JobState.SUCCEEDED))
    sink(_change("3", JobState.STOPPED, "interrupted"))  # never started
    sink(_change("2", JobState.STOPPED, "interrupted"))
    assert sink.counts["queued"] == 0 and sink.counts["running"] == 0
    assert sink.counts["succeeded"] == 1 and sink.counts["stopped"] == 2
    # The same event twice does not count twice.
    sink(_change("1", JobState.SUCCEEDED))
    assert sink.counts["succeeded"] == 1


def test_the_bar_completes_when_every_remote_job_is_decided() -> None:
    sink, _ = _sink(terminal=True)
    sink(JobsPlanned("g", total=3, to_run=3, skipped=0, remote=True))
    assert sink._progress is not None
    sink(_change("1", JobState.SUBMITTED))
    sink(_change("2", JobState.FAILED))
    task = sink._progress.tasks[0]
    assert task.completed == 2 and task.total == 3
    sink(_change("3", JobState.SUBMITTED))
    assert sink._progress.tasks[0].completed == 3
    sink.close()
    assert sink._progress is None


def test_push_progress_is_one_line_per_layer_state_in_verbose() -> None:
    quiet, out = _sink()
    quiet(PushProgress("r/i", "The push refers to repository [r/i]"))
    quiet(PushProgress("r/i", "Pushing", "abc123"))
    assert out.getvalue() == "  The push refers to repository [r/i]\n"
    loud, out = _sink(verbose=True)
    loud(PushProgress("r/i", "Pushed", "abc123"))
    assert out.getvalue() == "  abc123: Pushed\n"
