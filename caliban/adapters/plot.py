"""Draw a :class:`~caliban.core.results.Plot`: in the terminal (plotext) or as an
image file (matplotlib, the optional ``[plot]`` extra, drawn off-screen with Agg).

Both draw one marker per job, one colour per series; matplotlib also joins the
points of a series. Neither touches a display or the user's matplotlib settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caliban.core.results import Plot
from caliban.errors import MissingExtra

__all__ = ["IMAGE_SIZE", "Point", "terminal", "write_image"]

#: Width and height of a PNG, in pixels.
IMAGE_SIZE = (800, 500)
_DPI = 100


def _title(plot: Plot) -> str:
    return f"{plot.metric} vs {plot.param}"


def terminal(plot: Plot, *, width: int, height: int, color: bool) -> str:
    """The plot as text of ``width`` x ``height`` characters."""
    import plotext

    fig = plotext.figure
    fig.clear()
    # Our size, not the terminal's: the text may go to a pipe.
    plotext.terminal.limit(False, False)
    fig.plot_size(width, height)
    # A marker of its own per series, so the series are told apart without
    # colours too; the key goes below the plot, where it hides no point.
    for series, marker in zip(plot.series, _markers(len(plot.series)), strict=True):
        fig.draw(fig.signal(series.x, series.y, marker=marker))
    fig.legend(False)
    fig.theme("simple")  # colours for the points only, the terminal's own for the rest
    x = fig.ruler("x")
    if plot.log_x:
        x.scale("log")
    if plot.ticks is not None:
        x.ticks([p for p, _ in plot.ticks], [name for _, name in plot.ticks])
        x.lim(-0.5, len(plot.ticks) - 0.5)
    fig.title(_title(plot))
    fig.label(plot.param, axis="x")
    text: str = fig.build().string(colorless=not color).rstrip("\n")
    fig.clear()
    if len(plot.series) > 1:
        key = "   ".join(
            f"{m} {s.label}" for s, m in zip(plot.series, _markers(len(plot.series)), strict=True)
        )
        text += "\n" + key
    return text


_MARKERS = "●▲■◆✚✖★○"


def _markers(n: int) -> list[str]:
    return [_MARKERS[i % len(_MARKERS)] for i in range(n)]


@dataclass(frozen=True)
class Point:
    """Where a job's marker is in a PNG (pixels from the top left) and its colour."""

    job_id: str
    x: float
    y: float
    rgb: tuple[int, int, int]


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtra("plot", feature="--plot_file", package="matplotlib") from exc
    width, height = IMAGE_SIZE
    # A bare Figure is drawn by Agg (or the SVG backend) without pyplot, so no
    # display or interactive backend is ever looked for.
    return Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")


def check_extra() -> None:
    """Refuse (exit 2) ``--plot_file`` early when matplotlib is not installed."""
    _figure()


def write_image(plot: Plot, path: Path) -> list[Point]:
    """Write ``plot`` to ``path`` (PNG or SVG, by its suffix); where each point is."""
    from matplotlib.colors import to_rgb

    fig = _figure()
    ax = fig.add_subplot()
    lines = []
    for i, series in enumerate(plot.series):
        (line,) = ax.plot(
            series.x,
            series.y,
            marker="o",
            markersize=8,
            linewidth=1.2,
            label=series.label,
            zorder=3,
        )
        # Named in an SVG (<g id="series-0">), so each series' markers can be found.
        line.set_gid(f"series-{i}")
        lines.append(line)
    if plot.log_x:
        ax.set_xscale("log")
    if plot.ticks is not None:
        ax.set_xticks([p for p, _ in plot.ticks], [name for _, name in plot.ticks])
        ax.set_xlim(-0.5, len(plot.ticks) - 0.5)
    ax.set_xlabel(plot.param)
    ax.set_ylabel(plot.metric)
    ax.set_title(_title(plot))
    ax.grid(True, alpha=0.3)
    if len(plot.series) > 1:
        # Outside the axes, so it never hides a point.
        fig.legend(loc="outside right upper")
    fmt = "svg" if path.suffix.lower() == ".svg" else "png"
    fig.savefig(path, format=fmt, dpi=_DPI)
    # Read after saving: the layout is final only once the figure was drawn for it.
    height = fig.bbox.height
    points = []
    for series, line in zip(plot.series, lines, strict=True):
        rgb = tuple(round(c * 255) for c in to_rgb(line.get_color()))
        for job_id, xy in zip(
            series.job_ids,
            ax.transData.transform(list(zip(series.x, series.y, strict=True))),
            strict=True,
        ):
            points.append(Point(job_id, float(xy[0]), float(height - xy[1]), rgb))  # type: ignore[arg-type]
    return points
