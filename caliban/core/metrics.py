"""The metrics a job reports, and how they are read back from its output.

The convention is one line: a job reports metrics by printing a JSON object on
a line of its own, and the last such line of its output wins::

    print(json.dumps({"accuracy": 0.97, "loss": 0.08}), flush=True)

:func:`report` prints that line for scripts that have caliban installed.
:class:`MetricsReader` finds it in output of any size, fed in pieces as a
platform yields them, keeping at most one line in memory. Pure: standard library only.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["MAX_LINE", "MetricsReader", "last_metrics", "report"]

#: A longer line is skipped unread: a metrics line is short, and a multi-megabyte
#: line of progress output must not be held in memory or parsed.
MAX_LINE = 1 << 20

# CSI and OSC sequences (colours, cursor moves, titles) and the other two-byte escapes.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def report(file: IO[str] | None = None, **metrics: Any) -> None:
    """Report a job's metrics: print them as one JSON line and flush.

    ``caliban.report(accuracy=0.97, loss=0.08)`` in a training script makes
    ``caliban results`` show both columns; call it again and the last call wins.
    Values are anything JSON can hold (numbers are what ``--sort``, ``--best``
    and ``--plot`` use). A script without caliban installed prints the same
    line itself: ``print(json.dumps({"accuracy": 0.97}), flush=True)``.
    """
    out = sys.stdout if file is None else file
    out.write(json.dumps(metrics, default=str) + "\n")
    out.flush()


def _metrics_of(line: str) -> dict[str, Any] | None:
    if "\x1b" in line:
        line = _ESCAPES.sub("", line)
    # A line redrawn with carriage returns shows its last state.
    line = line.strip().rpartition("\r")[2].strip()
    if not (line.startswith("{") and line.endswith("}")):
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class MetricsReader:
    """The last metrics line of an output fed in arbitrary pieces."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.metrics: dict[str, Any] | None = None
        self._partial: list[str] = []
        self._size = 0
        self._skipping = False

    def feed(self, text: str) -> None:
        lines = text.split("\n")
        for i, piece in enumerate(lines):
            last = i == len(lines) - 1
            if not self._skipping:
                self._size += len(piece)
                if self._size > self.max_line:
                    self._skipping = True
                    self._partial.clear()
                else:
                    self._partial.append(piece)
            if not last:
                self._end_line()

    def _end_line(self) -> None:
        if not self._skipping:
            found = _metrics_of("".join(self._partial))
            if found is not None:
                self.metrics = found
        self._partial.clear()
        self._size = 0
        self._skipping = False

    def close(self) -> dict[str, Any] | None:
        """The metrics found (the unterminated last line counts too), or None."""
        self._end_line()
        return self.metrics


def last_metrics(chunks: Iterable[str], max_line: int = MAX_LINE) -> dict[str, Any] | None:
    """The last metrics line of ``chunks`` (a whole output, in pieces), or None."""
    reader = MetricsReader(max_line)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.close()


def number(value: object) -> float | None:
    """A metric as a number to compare, or None (text, booleans, NaN, nested values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    as_float = float(value)
    return as_float if math.isfinite(as_float) else None
