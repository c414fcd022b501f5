"""The terminal's view of job output: sanitised, \\r-aware, bounded, rate-limited."""

from __future__ import annotations

import io
import itertools
import re

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from caliban.cli.ui import ConsoleSink
from caliban.core.output import OutputView, sanitize, sanitize_text, visible
from caliban.events import JobOutput, JobOutputSkipped

# Anything a terminal could act on: C0 but TAB, DEL, C1, bidi overrides.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
MB = 1 << 20


def unlimited(**kw: int) -> OutputView:
    return OutputView(rate=1e9, burst=10**9, **kw)


def lines(items: list[str | int]) -> list[str]:
    return [i for i in items if isinstance(i, str)]


# -- sanitiser -------------------------------------------------------------------------------


def test_escape_sequences_are_removed_and_text_kept() -> None:
    cases = {
        "\x1b]0;pwned window title\x07hello": "hello",  # OSC, BEL-terminated
        "\x1b]2;title\x1b\\after": "after",  # OSC, ST-terminated
        "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\": "link",  # hyperlink
        "\x1b[2J\x1b[Hcleared": "cleared",  # clear screen, cursor home
        "\x1b[1;31mred\x1b[0m plain": "red plain",  # colours
        "\x1b[?1049hscreen": "screen",  # alternate screen
        "\x1bPq#0;2;0;0;0\x1b\\sixel": "sixel",  # DCS
        "\x1bcreset": "reset",  # RIS
        "bell\x07 back\x08space": "bell backspace",
        "c1 \x9b31mcsi \x85nel": "c1 csi nel",
        "bidi \u202eevil\u202c": "bidi evil",
        "tab\tkept": "tab\tkept",
        "cut short \x1b[3": "cut short ",
        "unterminated \x1b]0;title": "unterminated ",
        "lone escape \x1b": "lone escape ",
        "ünïcode ✓ 日本": "ünïcode ✓ 日本",
    }
    for raw, shown in cases.items():
        assert sanitize_text(raw) == shown, raw


def test_invalid_utf8_and_nul_become_visible_text() -> None:
    assert sanitize(b"a\xffb\x00c\xe2\x82") == "a\ufffdbc\ufffd"


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_sanitised_text_holds_no_control_character(text: str) -> None:
    assert not CONTROL.search(sanitize_text(text))


@given(st.binary())
def test_sanitised_bytes_hold_no_control_character(raw: bytes) -> None:
    assert not CONTROL.search(sanitize(raw))


# -- lines and carriage returns --------------------------------------------------------------


def test_visible_part_of_a_redrawn_line() -> None:
    assert visible(b" 10%|#   |\r 50%|##  |\r100%|####|") == b"100%|####|"
    assert visible(b"windows line\r") == b"windows line"
    assert visible(b"\r\r") == b""
    assert visible(b"plain") == b"plain"


def test_tqdm_progress_shows_its_last_state_across_chunks() -> None:
    view = unlimited()
    assert view.feed(b"epoch 1\n 10%|#", 0) == ["epoch 1"]
    assert view.feed(b"   |\r 50%|##  |\r", 0) == []
    assert view.feed(b"100%|####|\nnext\r\n", 0) == ["100%|####|", "next"]
    # A \r at the end of one chunk and \n at the start of the next is one line end.
    assert view.feed(b"crlf\r", 0) == []
    assert view.feed(b"\nthen\r", 0) == ["crlf"]
    assert view.feed(b"redrawn\n", 0) == ["redrawn"]


def test_streams_keep_their_own_unfinished_line() -> None:
    view = unlimited()
    assert view.feed(b"out: half", 0, stream=1) == []
    assert view.feed(b"err line\n", 0, stream=2) == ["err line"]
    assert view.feed(b" done\n", 0, stream=1) == ["out: half done"]


def test_unfinished_last_line_comes_out_at_close() -> None:
    view = unlimited()
    assert view.feed(b"no newline at the end", 0) == []
    assert view.close() == ["no newline at the end"]
    assert view.close() == []


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8))
def test_unlimited_view_does_not_depend_on_how_output_is_chunked(
    data: bytes, cuts: list[int]
) -> None:
    whole = unlimited(limit=16)
    expected = whole.feed(data, 0) + whole.close()
    pieces = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    chunked = unlimited(limit=16)
    got: list[str | int] = []
    for a, b in itertools.pairwise(pieces):
        got += chunked.feed(data[a:b], 0)
    assert got + chunked.close() == expected
    # Without a \r every line is its own text, sanitised and cut at 16 bytes.
    if b"\r" not in data:
        raw_lines = data.split(b"\n")
        if not raw_lines[-1]:
            raw_lines.pop()
        assert len(expected) == len(raw_lines)


# -- long lines: bounded memory ----------------------------------------------------------------


def test_a_10_mb_line_is_cut_and_the_splitter_never_holds_more_than_the_limit() -> None:
    limit = 64 * 1024
    view = OutputView(limit=limit)
    for _ in range(10):
        assert view.feed(b"x" * MB, 0) == []
        held = sum(len(p.buf) for p in view._partials.values())
        assert held <= limit
    (line,) = view.feed(b"yz\n", 0)
    assert line == "x" * limit + f" … [{10 * MB - limit + 2:,} more bytes in the log]"
    assert all(not p.buf for p in view._partials.values())


def test_a_long_line_inside_one_chunk_is_cut_too() -> None:
    view = OutputView(limit=8)
    assert view.feed(b"short\n" + b"L" * 1000 + b"\nend\n", 0) == [
        "short",
        "LLLLLLLL … [992 more bytes in the log]",
        "end",
    ]


def test_many_tiny_chunks_of_one_line_stay_bounded() -> None:
    view = OutputView(limit=100)
    for _ in range(10_000):
        view.feed(b"ab", 0)
        assert len(view._partials[1].buf) <= 100
    assert view.close() == ["ab" * 50 + " … [19,900 more bytes in the log]"]


# -- rate limit ---------------------------------------------------------------------------------


def test_a_flood_shows_a_burst_a_count_and_the_last_lines() -> None:
    view = OutputView(rate=10, burst=5, tail=3)
    flood = b"".join(b"line %d\n" % i for i in range(1000))
    shown = view.feed(flood, 0.0)
    assert shown == [f"line {i}" for i in range(5)]
    # Ending the job shows how much was left out, then the last lines (a traceback).
    assert view.close() == [992, "line 997", "line 998", "line 999"]


def test_budget_refills_over_time_and_the_gap_is_reported() -> None:
    view = OutputView(rate=2, burst=2, tail=1)
    assert view.feed(b"a\nb\nc\nd\n", 0.0) == ["a", "b"]
    assert view.feed(b"e\n", 1.0) == [1, "d", "e"]  # c left out, d kept as the tail
    assert view.feed(b"f\n", 1.0) == []  # the tail line cost a token too
    assert view.feed(b"g\n", 1.5) == [1, "g"]  # still flooding: f is only counted
    assert view.close() == []


def test_a_steady_flood_is_held_to_the_rate() -> None:
    view = OutputView(rate=20, burst=10, tail=5)
    items: list[str | int] = []
    for tick in range(1000):  # 10 s of 100 lines every 10 ms
        chunk = b"".join(b"t%d line %d\n" % (tick, i) for i in range(100))
        items += view.feed(chunk, tick / 100)
    assert len(lines(items)) <= 10 + 20 * 10 + 1
    end = view.close()
    assert lines(end) == [f"t999 line {i}" for i in range(95, 100)]
    counted = sum(i for i in items + end if isinstance(i, int))
    assert len(lines(items + end)) + counted == 100_000


@given(
    st.lists(st.binary(max_size=60), max_size=30),
    st.integers(0, 5),
    st.integers(0, 4),
)
def test_every_line_is_either_shown_or_counted(chunks: list[bytes], burst: int, tail: int) -> None:
    view = OutputView(rate=3, burst=burst, tail=tail, limit=10)
    items: list[str | int] = []
    for n, chunk in enumerate(chunks):
        items += view.feed(chunk, n * 0.1)
    view_end = view.close()
    items += view_end
    data = b"".join(chunks)
    total = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    shown = len(lines(items))
    counted = sum(i for i in items if isinstance(i, int))
    # A trailing fragment of only \r has nothing visible and no line end: not a line.
    if data and not data.endswith(b"\n") and not visible(data.rsplit(b"\n", 1)[-1]):
        total -= 1
    assert shown + counted == total
    # Before the end, never more than the burst plus the rate over the time spent.
    before_close = len(lines(items[: len(items) - len(view_end)]))
    assert before_close <= burst + 3 * 0.1 * max(0, len(chunks) - 1) + 1
    assert all(len(s.encode()) <= 10 * 3 + 40 for s in lines(items))


# -- the console ----------------------------------------------------------------------------------


def test_console_prints_sanitised_lines_and_the_skipped_marker() -> None:
    out = io.StringIO()
    sink = ConsoleSink(Console(file=out, width=200, color_system=None))
    sink(JobOutput("j1", "1/2", "\x1b]0;title\x07\x1b[2Jhello"))
    sink(JobOutputSkipped("j1", "1/2", 12345, "/home/u/.caliban/logs/g/j1.log"))
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert text.splitlines() == [
        "[1/2] hello",
        "[1/2] … 12,345 lines not shown, see /home/u/.caliban/logs/g/j1.log",
    ]
