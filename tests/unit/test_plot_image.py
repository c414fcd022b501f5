"""Plots drawn for real: the PNG opens, has its size and the markers where the points are;
the SVG has one group of markers per series; the terminal plot one marker per point."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from caliban.adapters import plot as draw
from caliban.core.results import Plot, Series

PLOT = Plot(
    "learning_rate",
    "accuracy",
    [
        Series("epochs=5", [0.001, 0.01, 0.1], [0.62, 0.95, 0.96], ["a", "b", "c"]),
        Series("epochs=20", [0.001, 0.01, 0.1], [0.92, 0.97, 0.973], ["d", "e", "f"]),
    ],
    None,
    True,
)


def test_png_has_every_point_in_its_series_colour(tmp_path: Path) -> None:
    from PIL import Image

    points = draw.write_image(PLOT, tmp_path / "p.png")
    assert [p.job_id for p in points] == ["a", "b", "c", "d", "e", "f"]
    assert len({p.rgb for p in points[:3]} | {p.rgb for p in points[3:]}) == 2
    with Image.open(tmp_path / "p.png") as image:
        assert image.size == draw.IMAGE_SIZE
        rgb = image.convert("RGB")
        for p in points:
            assert rgb.getpixel((round(p.x), round(p.y))) == p.rgb
    a, d = points[0], points[3]
    assert a.x == pytest.approx(d.x) and a.y > d.y  # same x, lower accuracy further down


def test_svg_has_one_marker_per_point_in_each_series(tmp_path: Path) -> None:
    draw.write_image(PLOT, tmp_path / "p.svg")
    ns = "{http://www.w3.org/2000/svg}"
    groups = {
        g.get("id"): len(list(g.iter(f"{ns}use")))
        for g in ET.parse(tmp_path / "p.svg").iter(f"{ns}g")
        if g.get("id", "").startswith("series-")
    }
    assert groups == {"series-0": 3, "series-1": 3}


def test_terminal_plot_shows_each_point_and_a_key() -> None:
    text = draw.terminal(PLOT, width=80, height=20, color=False)
    *canvas, key = text.splitlines()
    assert key == "● epochs=5   ▲ epochs=20"
    body = "\n".join(canvas)
    assert body.count("●") == 3 and body.count("▲") == 3 and "\x1b[" not in text
    assert "\x1b[" in draw.terminal(PLOT, width=80, height=20, color=True)
