"""Piped or redirected output: nothing wrapped, nothing padded, documents verbatim."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from caliban import events as ev
from caliban.cli.ui import ConsoleSink, _LineEnds, jobs_table, make_console
from caliban.spec import JobRecord, JobState, Platform


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def _job(index: int, args: tuple[str, ...]) -> JobRecord:
    return JobRecord(
        job_id=f"01JOB{index:021d}",
        platform=Platform.LOCAL,
        state=JobState.SUCCEEDED,
        xgroup="xg",
        experiment_id=index,
        index=index,
        args=args,
        kwargs={},
        image="img",
        spec={},
        details={},
        platform_id=None,
        exit_code=0,
        message=None,
        log_path=None,
        user="me",
        created="2026-01-01T00:00:00",
        updated="2026-01-01T00:00:00",
    )


def test_long_lines_and_table_cells_are_never_folded_or_padded() -> None:
    out = io.StringIO()
    console = make_console(out)
    assert not console.is_terminal
    long_line = "x" * 1000
    console.print(long_line)
    args = tuple(f"--flag{i} {i}" for i in range(120))
    console.print(jobs_table([_job(0, args), _job(1, ("--short",))]))
    lines = out.getvalue().splitlines()
    assert lines[0] == long_line
    assert all(line == line.rstrip() for line in lines)
    rows = [line for line in lines if line.strip().startswith("00000")]
    assert len(rows) == 2
    assert rows[0].endswith(" ".join(args)) and rows[1].endswith("--short")


def test_notices_keep_brackets_and_documents_reach_stdout_verbatim() -> None:
    out, err = io.StringIO(), io.StringIO()
    sink = ConsoleSink(make_console(out), show_output=True)
    sink.err = make_console(err)
    document = json.dumps([{"args": ["[bold]", "--lr", "0.1" * 100]}], indent=2)
    manifests = yaml.safe_dump_all(
        [{"kind": "Job", "args": ["[red]x[/]"]}, {"kind": "Job"}], explicit_start=True
    )
    sink(ev.Document(document))
    sink(ev.Notice("dry run: nothing was recorded", level="status"))
    sink(ev.Document(manifests))
    text = out.getvalue()
    assert text == document + "\n" + manifests
    assert err.getvalue() == "dry run: nothing was recorded\n"


def test_line_ends_hold_blanks_until_they_know_a_line_ends_there() -> None:
    target = io.StringIO()
    stream = _LineEnds(target)
    for chunk in ("a   ", "\nb ", " c  ", "  \n", "d", "  "):
        stream.write(chunk)
    assert target.getvalue() == "a\nb  c\nd"
