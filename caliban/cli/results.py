"""``caliban results``: what each job of a sweep reported, as a table, JSON, CSV or a plot.

The rows come from :meth:`caliban.session.Session.results`; choosing columns,
sorting and the best job are :mod:`caliban.core.results`; plots are drawn by
:mod:`caliban.adapters.plot`. Every check of the flags happens before anything
is printed or any file written.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliban.errors import EXIT_FAILURE, EXIT_OK, ValidationError

if TYPE_CHECKING:
    from caliban.core.results import Result
    from caliban.session import Session

_DESCRIPTION = """\
One row per job of an experiment group (the latest job of each experiment, as
`caliban status --xgroup` shows): its flags, its state and the metrics it
reported. A job reports metrics by printing a JSON object on a line of its own,
e.g. print(json.dumps({"accuracy": 0.97}), flush=True) or caliban.report(accuracy=0.97);
the last such line wins. Unfinished jobs are refreshed and shown without metrics.
Each ended job's output is read once; what it reported is kept in the history.
--sort and --best rank by a number: the largest first, the smallest with --min.
"""

_EXAMPLES = """\
examples:
  caliban results                                   the latest group, as a table
  caliban results --xgroup lr-sweep --sort accuracy best first
  caliban results --best accuracy                   only the best job
  caliban results --best loss --min --json          the job with the lowest loss, as JSON
  caliban results --metric accuracy --csv > runs.csv
  caliban results --plot learning_rate:accuracy     a plot in the terminal
  caliban results --plot learning_rate:accuracy --plot_file sweep.png
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``results`` subcommand to caliban's parser."""
    p = sub.add_parser(
        "results",
        help="what each job of a sweep reported: a table, JSON, CSV or a plot",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--xgroup", help="experiment group (default: the one of the latest job)")
    p.add_argument(
        "--metric",
        action="append",
        metavar="M",
        help="show only this metric (repeat for more; default: every metric reported)",
    )
    rank = p.add_mutually_exclusive_group()
    rank.add_argument("--sort", metavar="M", help="sort by metric M, largest first")
    rank.add_argument(
        "--best", metavar="M", help="show only the job with the largest M (ties: the first)"
    )
    p.add_argument(
        "--min", action="store_true", help="smaller is better for --sort and --best (a loss)"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON array, one object per job")
    fmt.add_argument("--csv", action="store_true", help="print CSV: a header and one row per job")
    p.add_argument(
        "--plot",
        metavar="PARAM:METRIC",
        help="draw METRIC against the flag PARAM in the terminal, one series per "
        "combination of the other flags",
    )
    p.add_argument(
        "--plot_file",
        metavar="FILE",
        help="also write the --plot as an image, FILE.png or FILE.svg (needs caliban-async[plot])",
    )
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(handler=cmd_results)


def _check_flags(ns: argparse.Namespace) -> Path | None:
    if ns.min and not (ns.sort or ns.best):
        raise ValidationError("--min goes with --sort M or --best M")
    if ns.plot and (ns.json or ns.csv):
        raise ValidationError("--plot draws in the terminal: leave out --json/--csv")
    if ns.plot_file is None:
        return None
    if not ns.plot:
        raise ValidationError("--plot_file needs --plot PARAM:METRIC to know what to draw")
    path = Path(ns.plot_file)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValidationError(f"--plot_file {ns.plot_file}: give a .png or .svg file name")
    if not path.parent.expanduser().is_dir():
        raise ValidationError(f"--plot_file {ns.plot_file}: no folder {str(path.parent)!r}")
    from caliban.adapters.plot import check_extra

    check_extra()
    return path.expanduser()


def cmd_results(ns: argparse.Namespace) -> int:
    from caliban.cli import running

    plot_file = _check_flags(ns)
    sink = running.make_sink(ns)

    async def work(session: Session) -> list[Result]:
        return await session.results(xgroup=ns.xgroup)

    found, code = running.execute(ns, work, sink)
    if found is None:
        return code if code is not None else EXIT_FAILURE
    return _show(ns, found, plot_file, sink.console)


def _show(ns: argparse.Namespace, found: list[Result], plot_file: Path | None, console: Any) -> int:
    from caliban.core import results as table

    # Every name is checked before the first line is printed.
    cols = table.columns(found, ns.metric)
    rows = found
    if ns.sort:
        rows = table.sort(found, ns.sort, smallest=ns.min)
    elif ns.best:
        rows = [table.best(found, ns.best, smallest=ns.min)]
    plot = table.plot(found, ns.plot) if ns.plot else None
    unavailable = [r for r in found if r.note and r.note.startswith("output not available")]
    for r in unavailable:
        print(f"caliban: job {r.job.short_id}: {r.note}", file=sys.stderr)
    if plot is not None:
        from caliban.adapters import plot as draw

        size = shutil.get_terminal_size((100, 30))
        print(
            draw.terminal(
                plot,
                width=min(size.columns, 120),
                height=max(12, min(size.lines - 6, 24)),
                color=sys.stdout.isatty(),
            )
        )
        if plot_file is not None:
            points = draw.write_image(plot, plot_file)
            print(f"wrote {plot_file} ({len(points)} points)", file=sys.stderr)
        return EXIT_OK
    records = table.records(rows, cols)
    if ns.json:
        print(json.dumps(records, indent=2, default=str))
    elif ns.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(cols)
        for record in records:
            writer.writerow([_csv_cell(record[c]) for c in cols])
    elif sys.stdout.isatty():
        console.print(_rich_table(rows, cols))
    else:
        print(_plain(rows, cols))
    return EXIT_OK


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _cells(result: Result, cols: Sequence[str]) -> list[str]:
    from caliban.core.results import text

    row = result.row()
    return [result.job.short_id if c == "job_id" else text(row.get(c)) for c in cols]


def _header(cols: Sequence[str]) -> list[str]:
    return ["job" if c == "job_id" else c for c in cols]


def _plain(rows: Sequence[Result], cols: Sequence[str]) -> str:
    """Aligned columns for a pipe or a file: no colours, no box characters."""
    lines = [_header(cols), *(_cells(r, cols) for r in rows)]
    notes = [r.note or "" for r in rows]
    if any(notes):
        lines[0].append("note")
        for line, note in zip(lines[1:], notes, strict=True):
            line.append(note)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _rich_table(rows: Sequence[Result], cols: Sequence[str]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from caliban.cli.ui import state_text

    group = rows[0].job.xgroup if rows else ""
    table = Table(box=None, header_style="dim", show_edge=False, padding=(0, 1))
    for c in _header(cols):
        table.add_column(c, no_wrap=True, justify="left" if c in ("job", "state") else "right")
    notes = any(r.note for r in rows)
    if notes:
        table.add_column("note", style="dim")
    for r in rows:
        cells: list[Any] = _cells(r, cols)
        cells[1] = state_text(r.job.state)
        table.add_row(*cells, *([r.note or ""] if notes else []))
    return Group(Text(f"xgroup {group}", style="bold"), table)
