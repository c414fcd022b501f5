"""Reading the metrics line back from a job's output (caliban.core.metrics)."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

import caliban
from caliban.core.metrics import MetricsReader, last_metrics, number, report


def test_the_last_json_object_line_wins() -> None:
    out = 'epoch 1\n{"accuracy": 0.5}\nepoch 2\n{"accuracy": 0.9, "loss": 0.1}\ndone\n'
    assert last_metrics([out]) == {"accuracy": 0.9, "loss": 0.1}


def test_no_metrics_line_is_none() -> None:
    assert last_metrics(["hello\n", "world"]) is None
    assert last_metrics([]) is None


def test_malformed_and_non_object_lines_are_skipped() -> None:
    lines = [
        '{"accuracy": 0.7}',
        '{"accuracy": 0.8',  # cut short
        "{not json}",
        "[1, 2, 3]",
        '"a string"',
        "42",
        "{" * 50_000 + "}" * 50_000,  # too deep for json: no crash
        'INFO {"accuracy": 0.1}',  # not a line of its own
    ]
    assert last_metrics(["\n".join(lines) + "\n"]) == {"accuracy": 0.7}


def test_colours_carriage_returns_and_spaces_are_ignored() -> None:
    out = '\x1b[32m{"accuracy": 0.9}\x1b[0m\r\n'
    assert last_metrics([out]) == {"accuracy": 0.9}
    redrawn = 'progress 10%\rprogress 100%\r{"accuracy": 0.8}  \n'
    assert last_metrics([redrawn]) == {"accuracy": 0.8}
    osc = '\x1b]0;title\x07{"a": 1}\n'
    assert last_metrics([osc]) == {"a": 1}


def test_an_unterminated_last_line_counts() -> None:
    assert last_metrics(['x\n{"a": 1}']) == {"a": 1}


def test_huge_lines_are_skipped_without_being_kept() -> None:
    reader = MetricsReader(max_line=1000)
    reader.feed('{"a": 1}\n{"big": "')
    for _ in range(100):
        reader.feed("x" * 500)
        assert sum(len(p) for p in reader._partial) <= 1000
    reader.feed('"}\n{"b": 2}\n' + "y" * 5000 + "\n")
    assert reader.close() == {"b": 2}
    # A metrics line longer than the limit is not read either.
    assert last_metrics(['{"a": "' + "z" * 2000 + '"}\n'], max_line=1000) is None


@given(
    metrics=st.dictionaries(st.text(max_size=8), st.integers() | st.floats(allow_nan=False)),
    noise=st.lists(st.text(alphabet=st.characters(blacklist_characters="{\n"))),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_any_split_of_the_output_finds_the_same_line(
    metrics: dict[str, float], noise: list[str], cuts: list[int]
) -> None:
    out = "\n".join([*noise, json.dumps(metrics), *noise]) + "\n"
    points = sorted({min(c, len(out)) for c in cuts})
    pieces = [out[a:b] for a, b in zip([0, *points], [*points, len(out)], strict=True)]
    assert last_metrics(pieces) == metrics


def test_report_prints_one_line_the_reader_finds() -> None:
    out = io.StringIO()
    report(out, accuracy=0.97, loss=0.08, note="ok")
    assert out.getvalue().count("\n") == 1
    assert last_metrics([out.getvalue()]) == {"accuracy": 0.97, "loss": 0.08, "note": "ok"}
    assert caliban.report is report


def test_only_finite_numbers_rank() -> None:
    assert number(3) == 3.0 and number(0.5) == 0.5
    assert number(True) is None and number("0.9") is None
    assert number(float("nan")) is None and number(float("inf")) is None
    assert number({"a": 1}) is None and number(None) is None
