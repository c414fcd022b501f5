"""The plain console shows what rich would, without styles, and without importing rich."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table
from rich.text import Text

from caliban.cli.plain import PlainConsole, Styled, escape, strip_markup
from caliban.cli.ui import make_console

SAMPLES = [
    "plain text",
    "[bold]3[/] job(s) in experiment group [bold]g[/]",
    "[green]2 job(s): 2 succeeded[/]",
    r"an escaped \[bold] tag",
    r"two backslashes \\[bold]then a tag[/bold]",
    "args --lr [0.1,0.2] --x=[a]",
    "a [#ff0000]hex[/] and [@click]action[/]",
    "ends with a backslash \\",
    "brackets [1] [ ] [Capital]",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_markup_is_read_as_rich_reads_it(text: str) -> None:
    assert strip_markup(text) == Text.from_markup(text).plain
    assert escape(text) == rich_escape(text)
    assert strip_markup(escape(text)) == Text.from_markup(rich_escape(text)).plain


def _plain() -> tuple[PlainConsole, io.StringIO]:
    out = io.StringIO()
    return PlainConsole(out, stderr=False, make_rich=lambda f, e: make_console(f, stderr=e)), out


def test_styled_text_prints_plain_here_and_styled_on_rich() -> None:
    line = Styled("[1/3] ", style="cyan").append("loss [0.5]", style="bold")
    console, out = _plain()
    console.print(line)
    console.print("[green]done[/]   ")
    assert out.getvalue() == "[1/3] loss [0.5]\ndone\n"
    rich_out = io.StringIO()
    Console(file=rich_out, force_terminal=True, color_system="standard").print(line)
    assert "[1/3] " in rich_out.getvalue() and "\x1b[" in rich_out.getvalue()


def test_what_only_rich_lays_out_goes_to_rich_on_the_same_stream() -> None:
    console, out = _plain()
    table = Table("job", "state")
    table.add_row("ab12", "RUNNING")
    console.print(table)
    text = out.getvalue()
    assert "ab12" in text and "RUNNING" in text and "\x1b[" not in text
