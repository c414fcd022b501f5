"""A sweep's results as rows: columns, sorting, the best job, and what a plot shows.

One :class:`Result` per job: its experiment's flags, its state, and the
metrics it reported (see :mod:`caliban.core.metrics`). Everything here is
pure, so ``caliban results`` and a user's own program agree on what "best"
means. Rules:

* columns are ``job_id``, ``state``, the flags (in the order the experiments
  name them), then the metrics (in the order jobs reported them). A metric that
  repeats a flag with the same value (a script echoing its learning rate) is not
  repeated; one that names a column with a different value is ``reported.NAME``.
* ``--sort M`` puts the largest M first (``smallest=True``: the smallest);
  ``--best M`` is the first of that order. Only numbers count: a job whose M is
  missing, text or NaN comes after every job with a number, in sweep order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from caliban.core.metrics import number
from caliban.errors import ValidationError
from caliban.spec import JobRecord

__all__ = ["Plot", "Result", "Series", "best", "columns", "plot", "records", "sort", "text"]

FIXED = ("job_id", "state")


@dataclass(frozen=True)
class Result:
    """One job of a sweep and what it reported.

    ``metrics`` is None when nothing was read (the job has not ended, or its
    output is not available: ``note`` says which) and ``{}`` when the job ended
    without printing a metrics line.
    """

    job: JobRecord
    metrics: dict[str, Any] | None
    note: str | None = None

    @property
    def flags(self) -> dict[str, object]:
        return dict(self.job.kwargs)

    @property
    def reported(self) -> dict[str, Any]:
        """The metrics as columns: echoes of flags dropped, clashes renamed."""
        out: dict[str, Any] = {}
        flags = self.job.kwargs
        for key, value in (self.metrics or {}).items():
            if key in flags and flags[key] == value:
                continue
            out[f"reported.{key}" if key in flags or key in FIXED else key] = value
        return out

    def row(self) -> dict[str, Any]:
        return {
            "job_id": self.job.job_id,
            "state": self.job.state.value,
            **self.flags,
            **self.reported,
        }


def _ordered(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def flag_names(results: Sequence[Result]) -> list[str]:
    return _ordered(k for r in results for k in r.flags)


def metric_names(results: Sequence[Result]) -> list[str]:
    return _ordered(k for r in results for k in r.reported)


def _known(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none yet"


def check_metric(results: Sequence[Result], name: str, *, numeric: bool = False) -> None:
    """Refuse (bad input) a metric no job reported (as a number, with ``numeric``)."""
    names = metric_names(results)
    if name not in names:
        raise ValidationError(
            f"no job reported a metric named {name!r} (metrics reported: {_known(names)})"
        )
    if numeric and all(number(r.reported.get(name)) is None for r in results):
        raise ValidationError(f"no job reported a number for {name!r}")


def columns(results: Sequence[Result], metrics: Sequence[str] | None = None) -> list[str]:
    """The columns shown: every metric, or only ``metrics`` (each checked to exist)."""
    for name in metrics or ():
        check_metric(results, name)
    chosen = list(metrics) if metrics else metric_names(results)
    return [*FIXED, *flag_names(results), *_ordered(chosen)]


def sort(results: Sequence[Result], metric: str, *, smallest: bool = False) -> list[Result]:
    """Largest ``metric`` first (smallest first with ``smallest``); jobs without a
    number for it last, in sweep order. Stable: ties keep sweep order."""
    check_metric(results, metric, numeric=True)
    scored = [(number(r.reported.get(metric)), i, r) for i, r in enumerate(results)]
    with_number = [(v, i, r) for v, i, r in scored if v is not None]
    with_number.sort(key=lambda t: (t[0] if smallest else -t[0], t[1]))
    return [r for _, _, r in with_number] + [r for v, _, r in scored if v is None]


def best(results: Sequence[Result], metric: str, *, smallest: bool = False) -> Result:
    """The job with the largest ``metric`` (the smallest with ``smallest``); the
    first in sweep order on a tie."""
    return sort(results, metric, smallest=smallest)[0]


def text(value: object) -> str:
    """A cell as a person reads it: numbers to 6 significant digits, nothing for missing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _jsonable(value: object) -> object:
    # Strict JSON has no NaN or Infinity; such a metric is shown as missing.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def records(results: Sequence[Result], cols: Sequence[str]) -> list[dict[str, Any]]:
    """One object per job with every column (missing values null), for JSON and CSV."""
    out = []
    for r in results:
        row = r.row()
        out.append({c: _jsonable(row.get(c)) for c in cols})
    return out


# -- plots -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The points of one combination of the flags that are not plotted."""

    label: str
    x: list[float]
    y: list[float]
    job_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plot:
    """What a plot of ``metric`` against ``param`` shows.

    x is the parameter's value when every value is a number; otherwise the
    values are categories placed at 0, 1, 2 ... and named by ``ticks``.
    ``log_x``: every x is positive and they span at least two decades (learning
    rates), so a log axis shows them evenly.
    """

    param: str
    metric: str
    series: list[Series]
    ticks: list[tuple[float, str]] | None
    log_x: bool

    @property
    def points(self) -> int:
        return sum(len(s.x) for s in self.series)


def _varying(results: Sequence[Result], param: str) -> list[str]:
    seen: dict[str, set[str]] = {}
    for r in results:
        for k, v in r.flags.items():
            if k != param:
                seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    return [k for k in flag_names(results) if len(seen.get(k, ())) > 1]


def plot(results: Sequence[Result], spec: str) -> Plot:
    """The plot ``PARAM:METRIC`` asks for: one series per combination of the other
    flags that vary, each sorted by x. Refuses (bad input) names that do not exist."""
    param, sep, metric = spec.partition(":")
    if not sep or not param or not metric:
        raise ValidationError(
            f"--plot takes PARAM:METRIC, e.g. learning_rate:accuracy, not {spec!r}"
        )
    flags = flag_names(results)
    if param not in flags:
        raise ValidationError(
            f"--plot: no experiment has a flag named {param!r} (flags: {_known(flags)})"
        )
    check_metric(results, metric, numeric=True)
    points = [
        (r, r.flags[param], number(r.reported.get(metric)))
        for r in results
        if param in r.flags and number(r.reported.get(metric)) is not None
    ]
    numeric = all(number(x) is not None for _, x, _ in points)
    ticks: list[tuple[float, str]] | None = None
    position: dict[str, float] = {}
    if not numeric:
        for _, x, _ in points:
            position.setdefault(text(x), float(len(position)))
        ticks = [(p, name) for name, p in position.items()]
    others = _varying(results, param)
    groups: dict[str, list[tuple[float, float, str]]] = {}
    for r, x, y in points:
        label = " ".join(f"{k}={text(r.flags.get(k))}" for k in others) or metric
        xv = number(x) if numeric else position[text(x)]
        assert xv is not None and y is not None
        groups.setdefault(label, []).append((xv, y, r.job.job_id))
    series = []
    for label, pts in groups.items():
        pts.sort(key=lambda p: p[0])
        series.append(Series(label, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]))
    xs = [x for s in series for x in s.x]
    log_x = numeric and bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 100
    return Plot(param, metric, series, ticks, log_x)
