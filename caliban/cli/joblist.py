"""Job listings for ``caliban status``: plain text and JSON, written as they are made.

A rich table costs about 1.4 ms a row, so a group of 10,000 jobs took 14 s to
print. Piped output, and terminal listings of more than :data:`LARGE` jobs, are
laid out here instead: the columns, widths and spacing of the rich table's
piped output (scripts and logs read the same text as before), without styles,
and with every cell shown verbatim (rich read ``[...]`` in arguments as markup
and dropped it). Small tables on a terminal are still rich's, coloured.

No rich import here: a piped ``status`` should not pay for it.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING

from caliban.cli.cells import platform_cell
from caliban.core.output import sanitize_text
from caliban.spec import JobRecord

if TYPE_CHECKING:
    from rich.console import Console

    from caliban.cli.plain import PlainConsole

# Past this many jobs a terminal gets the plain listing too: a person scrolling
# thousands of rows gains little from colour, and waits seconds for it.
LARGE = 200

_HEADERS = ("job", "#", "platform", "state", "exit", "created", "args")
_RIGHT = frozenset({1, 4})
_CHUNK = 1000  # rows per write


def job_json(job: JobRecord) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "xgroup": job.xgroup,
        "index": job.index,
        "platform": job.platform.value,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "message": job.message,
        "image": job.image,
        "args": list(job.args),
        "kwargs": job.kwargs,
        "platform_id": job.platform_id,
        "details": job.details,
        "log_path": job.log_path,
        "user": job.user,
        "created": job.created,
        "updated": job.updated,
        "provenance": job.provenance,
    }


def json_chunks(jobs: Iterable[JobRecord]) -> Iterator[str]:
    """A JSON array of :func:`job_json` objects, one job to a line, written job by job,
    so a big listing is never one big string.

    One line per job rather than ``indent=2``: the standard library encodes indented
    JSON in pure Python, which took about 1 s for 10,000 jobs, and compact JSON in C;
    a line per job also suits ``grep`` and ``head``. Parsers see the same document.
    """
    first = True
    for job in jobs:
        yield ("[\n" if first else ",\n") + _encode(job_json(job))
        first = False
    yield "[]" if first else "\n]"


_encode = json.JSONEncoder().encode


def write_json(jobs: Iterable[JobRecord], out: IO[str]) -> None:
    for chunk in json_chunks(jobs):
        out.write(chunk)
    out.write("\n")


def _cell_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide East Asian characters take two, combining
    marks none (what rich measures, so the columns line up the same)."""
    if text.isascii():
        return len(text)
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _cells(job: JobRecord) -> tuple[str, ...]:
    return (
        job.short_id,
        str(job.index + 1),
        platform_cell(job),
        job.state.value,
        "" if job.exit_code is None else str(job.exit_code),
        job.created[:19].replace("T", " "),
        sanitize_text(" ".join(job.args)),
    )


def _groups(jobs: Sequence[JobRecord]) -> Iterator[tuple[str, list[tuple[str, ...]]]]:
    """Runs of consecutive jobs of one group, as table rows."""
    group: str | None = None
    rows: list[tuple[str, ...]] = []
    for job in jobs:
        if job.xgroup != group and rows:
            assert group is not None
            yield group, rows
            rows = []
        group = job.xgroup
        rows.append(_cells(job))
    if rows:
        assert group is not None
        yield group, rows


def plain_lines(jobs: Sequence[JobRecord]) -> Iterator[str]:
    """The listing, line by line (no line ends), trailing blanks dropped."""
    for group, rows in _groups(jobs):
        yield sanitize_text(f"xgroup {group}")
        widths = [_cell_width(h) for h in _HEADERS]
        measured = [[_cell_width(c) for c in row] for row in rows]
        for sizes in measured:
            widths = [max(w, s) for w, s in zip(widths, sizes, strict=True)]
        for row, sizes in zip(
            [_HEADERS, *rows], [[len(h) for h in _HEADERS], *measured], strict=True
        ):
            parts = []
            for col, (cell, size) in enumerate(zip(row, sizes, strict=True)):
                pad = " " * (widths[col] - size)
                parts.append(f" {pad}{cell} " if col in _RIGHT else f" {cell}{pad} ")
            yield "".join(parts).rstrip(" ")


def write_plain(jobs: Sequence[JobRecord], out: IO[str]) -> None:
    batch: list[str] = []
    for line in plain_lines(jobs):
        batch.append(line)
        if len(batch) >= _CHUNK:
            out.write("\n".join(batch) + "\n")
            batch = []
    if batch:
        out.write("\n".join(batch) + "\n")


def show_jobs(jobs: Sequence[JobRecord], console: Console | PlainConsole, *, as_json: bool) -> None:
    """What ``caliban status`` prints for ``jobs`` (oldest first)."""
    if as_json:
        write_json(jobs, sys.stdout)
        sys.stdout.flush()
        return
    if not jobs:
        console.print("no jobs found")
    elif console.is_terminal and len(jobs) <= LARGE:
        from caliban.cli.ui import jobs_table

        console.print(jobs_table(jobs))
    else:
        write_plain(jobs, console.file)
    console.file.flush()
