"""Console output without rich, for when nobody is looking at a terminal.

Importing rich costs about 80 ms, more than a no-change ``caliban build``
should take in all. Piped or redirected output has no colours or live lines
to draw anyway, so :class:`PlainConsole` writes text itself and hands rich
only what needs laying out (a table), importing it then. :class:`Styled`
stands in for ``rich.text.Text`` in the sink: plain text where rich is
absent, and a rich ``Text`` (through ``__rich__``) on a rich console.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# The shape of a rich markup tag, as rich.markup defines it.
_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")
_TRAILING_BLANKS = re.compile(r" +\n")
_ESCAPE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escape(text: str) -> str:
    """Like ``rich.markup.escape``: ``text`` shown as it is inside a markup string."""

    def protect(m: re.Match[str]) -> str:
        backslashes, tag = m.groups()
        return f"{backslashes}{backslashes}\\{tag}"

    text = _ESCAPE.sub(protect, text)
    if text.endswith("\\") and not text.endswith("\\\\"):
        text += "\\"
    return text


def strip_markup(markup: str) -> str:
    """The text rich would show for a markup string, without its styles."""
    out: list[str] = []
    position = 0
    for m in _TAG.finditer(markup):
        full, escapes, _ = m.groups()
        start, end = m.span()
        out.append(markup[position:start])
        position = end
        if escapes:
            backslashes, escaped = divmod(len(escapes), 2)
            out.append("\\" * backslashes)
            if escaped:
                out.append(full[len(escapes) :])
    out.append(markup[position:])
    return "".join(out)


class Styled:
    """A line of text with styles on some of its parts, as rich's ``Text`` holds it."""

    def __init__(self, text: str = "", style: str = "") -> None:
        self._parts: list[tuple[str, str]] = [(text, style)] if text else []
        self.style = style
        self.no_wrap: bool | None = None
        self.overflow: str | None = None

    def append(self, text: str, style: str | None = None) -> Styled:
        self._parts.append((text, style or ""))
        return self

    @property
    def plain(self) -> str:
        return "".join(text for text, _ in self._parts)

    def __str__(self) -> str:
        return self.plain

    def __rich__(self) -> Text:
        from rich.text import Text

        text = Text(no_wrap=self.no_wrap, overflow=self.overflow)  # type: ignore[arg-type]
        for part, style in self._parts:
            # The line's own style under each part's, as Text(text, style=...) would.
            text.append(part, style=" ".join(s for s in (self.style, style) if s) or None)
        return text


def is_terminal(file: IO[str]) -> bool:
    """Whether rich would treat ``file`` as a terminal (its environment rules first)."""
    tty = os.environ.get("TTY_COMPATIBLE", "")
    if tty in ("0", "1"):
        return tty == "1"
    force = os.environ.get("FORCE_COLOR")
    if force is not None:
        return force != ""
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # closed
        return False


class PlainConsole:
    """The part of ``rich.console.Console`` caliban's commands use, for piped output."""

    is_terminal = False
    soft_wrap = True

    def __init__(
        self,
        file: IO[str] | None,
        *,
        stderr: bool,
        make_rich: Callable[[IO[str] | None, bool], Console],
    ) -> None:
        self._file = file
        self._stderr = stderr
        self._make_rich = make_rich
        self._rich: Console | None = None

    @property
    def file(self) -> IO[str]:
        # Looked up at each write, as rich does, so a replaced sys.stdout is honoured.
        if self._file is not None:
            return self._file
        return sys.stderr if self._stderr else sys.stdout

    @property
    def width(self) -> int:
        return self.rich().width

    def rich(self) -> Console:
        """A rich console on the same stream, set up for piped output, for what only rich
        can lay out."""
        if self._rich is None:
            self._rich = self._make_rich(self._file, self._stderr)
        return self._rich

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", **kwargs: Any) -> None:
        parts: list[str] = []
        for obj in objects:
            if isinstance(obj, Styled):
                parts.append(obj.plain)
            elif isinstance(obj, str):
                parts.append(strip_markup(obj) if kwargs.get("markup", True) else obj)
            else:
                self.rich().print(*objects, sep=sep, end=end, **kwargs)
                return
        # Blanks that end a line are noise in a log (the rich console drops them too).
        self.file.write(_TRAILING_BLANKS.sub("\n", sep.join(parts) + end))
        self.file.flush()

    def out(self, *objects: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        self.file.write(sep.join(str(o) for o in objects) + end)
        self.file.flush()
