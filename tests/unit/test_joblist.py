"""Status listings: the plain layout matches the rich table's piped text, JSON streams."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from caliban.cli import joblist
from caliban.cli.ui import jobs_table, make_console
from caliban.spec import JobRecord, JobState, Platform


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def _job(
    n: int,
    *,
    xgroup: str = "xg",
    args: tuple[str, ...] = ("--n", "1"),
    state: JobState = JobState.SUCCEEDED,
    exit_code: int | None = 0,
    index: int | None = None,
    message: str | None = None,
) -> JobRecord:
    return JobRecord(
        job_id=f"01JOB{n:021d}",
        platform=Platform.LOCAL if n % 2 else Platform.GKE,
        state=state,
        xgroup=xgroup,
        experiment_id=n,
        index=n if index is None else index,
        args=args,
        kwargs={"n": n, "text": "a\nb"},
        image="img",
        spec={"big": list(range(5))},
        details={"cluster": {"kind": "kubeconfig"}},
        platform_id=None,
        exit_code=exit_code,
        message=message,
        log_path=None,
        user="me",
        created="2026-01-01T00:00:00.123456+00:00",
        updated="2026-01-01T00:00:00.123456+00:00",
    )


def _rich_piped(jobs: list[JobRecord]) -> str:
    out = io.StringIO()
    make_console(out).print(jobs_table(jobs))
    return out.getvalue()


def _plain(jobs: list[JobRecord]) -> str:
    out = io.StringIO()
    joblist.write_plain(jobs, out)
    return out.getvalue()


_arg = st.text(
    alphabet=st.sampled_from("abcxyz-_=.,/0123456789 [](){}:'\"日本é"), min_size=0, max_size=12
)
_jobs = st.lists(
    st.builds(
        lambda n, group, args, state, code, index: _job(
            n, xgroup=group, args=tuple(args), state=state, exit_code=code, index=index
        ),
        st.integers(0, 10**6),
        st.sampled_from(["a", "b", "grp-日本"]),
        st.lists(_arg, max_size=4),
        st.sampled_from(list(JobState)),
        st.none() | st.integers(-255, 255),
        st.integers(0, 20_000),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(_jobs)
def test_plain_listing_is_the_piped_rich_table(jobs: list[JobRecord]) -> None:
    assert _plain(jobs) == _rich_piped(jobs)


def test_cells_are_verbatim_and_controls_are_removed() -> None:
    args = ("--tags", "[a,b]", "[bold]x[/]", ":smile:", "\x1b]0;title\x07\x1b[31mred")
    text = _plain([_job(1, args=args)])
    row = text.splitlines()[2]
    assert row.endswith("--tags [a,b] [bold]x[/] :smile: red")
    assert "\x1b" not in text
    assert _rich_piped([_job(1, args=args)]) == text


@settings(max_examples=100, deadline=None)
@given(_jobs)
def test_streamed_json_is_the_same_document(jobs: list[JobRecord]) -> None:
    streamed = "".join(joblist.json_chunks(jobs))
    assert json.loads(streamed) == [joblist.job_json(j) for j in jobs]
    lines = streamed.split("\n")
    # One job to a line between the brackets: each line is that job's own object.
    if jobs:
        assert lines[0] == "[" and lines[-1] == "]"
        body = lines[1:-1]
        assert len(body) == len(jobs)
        for line, job in zip(body, jobs, strict=True):
            assert json.loads(line.removesuffix(",")) == joblist.job_json(job)
    else:
        assert streamed == "[]"


def test_streamed_json_of_nothing_and_of_awkward_strings() -> None:
    assert "".join(joblist.json_chunks([])) == "[]"
    job = _job(3, args=("a\nb", '"q"', "\\", "\u2028"), message="line\n  indented")
    out = io.StringIO()
    joblist.write_json([job, job], out)
    parsed = json.loads(out.getvalue())
    assert parsed[0]["args"] == ["a\nb", '"q"', "\\", "\u2028"]
    assert parsed[1]["message"] == "line\n  indented"
    assert out.getvalue().endswith("\n]\n")
    assert out.getvalue().count("\n") == 4  # the brackets' lines and one per job


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    if terminal:
        return Console(file=out, force_terminal=True, width=200, highlight=False), out
    return make_console(out), out


def test_small_terminal_tables_stay_rich_and_large_ones_are_plain() -> None:
    small = [_job(i, state=JobState.FAILED, exit_code=1) for i in range(3)]
    console, out = _console(terminal=True)
    joblist.show_jobs(small, console, as_json=False)
    assert "\x1b[" in out.getvalue()  # coloured states: rich's table
    large = [_job(i) for i in range(joblist.LARGE + 1)]
    console, out = _console(terminal=True)
    joblist.show_jobs(large, console, as_json=False)
    assert out.getvalue() == _plain(large)
    assert out.getvalue().count("SUCCEEDED") == len(large)


def test_piped_listings_are_plain_whatever_their_size() -> None:
    jobs = [_job(i, xgroup="a" if i < 2 else "b") for i in range(4)]
    console, out = _console(terminal=False)
    joblist.show_jobs(jobs, console, as_json=False)
    assert out.getvalue() == _plain(jobs) == _rich_piped(jobs)
    lines = out.getvalue().splitlines()
    assert [line for line in lines if line.startswith("xgroup")] == ["xgroup a", "xgroup b"]
    console, out = _console(terminal=False)
    joblist.show_jobs([], console, as_json=False)
    assert out.getvalue() == "no jobs found\n"


def test_json_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    jobs = [_job(i) for i in range(3)]
    console, out = _console(terminal=True)
    joblist.show_jobs(jobs, console, as_json=True)
    assert out.getvalue() == ""
    assert json.loads(capsys.readouterr().out) == [joblist.job_json(j) for j in jobs]
