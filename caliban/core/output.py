"""What a job's output looks like on the terminal: a bounded, sanitised, rate-limited view.

The log file keeps every byte a job writes; this module decides which few lines
of it a person watching a sweep sees, and makes them safe to print:

- A line is what ends in ``\\n``. Its visible part is its last non-empty
  ``\\r``-separated segment, which is what a terminal would show after a
  tqdm-style progress bar redraws itself.
- A line longer than ``limit`` bytes is cut for the terminal; the splitter
  never holds more than ``limit`` bytes of a line per stream, whatever the
  job writes.
- Each job gets a token bucket: a burst of lines, then ``rate`` lines per
  second, tail lines included. Lines over budget are only counted (no
  decoding, no copying), except the last few, which are shown once output
  slows down enough to afford them, or when the job ends, so a final
  traceback is never hidden behind a flood.
- Escape sequences (CSI, OSC, DCS ...), C0/C1 controls, DEL and bidi overrides
  are removed: a job cannot retitle the window, clear the screen or ring the bell.

Pure: standard library only.
"""

from __future__ import annotations

import re
from collections import deque

LIMIT = 64 * 1024
RATE = 20.0
BURST = 200
TAIL = 10

_UNSAFE = re.compile(
    r"""
      \x1b\[[0-?]*[ -/]*[@-~]?              # CSI ... final byte (or cut short)
    | \x1b[\]PX^_].*?(?:\x07|\x1b\\|\Z)     # OSC, DCS, SOS, PM, APC up to BEL or ST
    | \x1b[ -/]*[0-~]?                      # any other escape sequence, or a lone ESC
    | \x9b[0-?]*[ -/]*[@-~]?                # 8-bit CSI
    | [\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]  # controls but TAB; bidi
    """,
    re.VERBOSE | re.DOTALL,
)


def sanitize_text(text: str) -> str:
    """Printable text only: what is left when every terminal control is taken out."""
    return _UNSAFE.sub("", text)


def sanitize(raw: bytes) -> str:
    """Bytes of one line as safe text (invalid UTF-8 shows as U+FFFD)."""
    return sanitize_text(raw.decode("utf-8", "replace"))


def visible(line: bytes) -> bytes:
    """The last non-empty ``\\r`` segment: what the terminal shows of a redrawn line."""
    if b"\r" not in line:
        return line
    for segment in reversed(line.split(b"\r")):
        if segment:
            return segment
    return b""


class _Partial:
    """The unfinished line of one stream, never more than ``limit`` bytes of it."""

    __slots__ = ("buf", "cut", "fresh", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.cut = 0  # bytes of the current segment beyond the limit
        self.fresh = False  # a \r was seen: the next text starts a new segment

    def extend(self, data: bytes) -> None:
        segments = data.split(b"\r") if b"\r" in data else (data,)
        for i, segment in enumerate(segments):
            if i:
                self.fresh = True
            if not segment:
                continue
            if self.fresh:
                self.buf.clear()
                self.cut = 0
                self.fresh = False
            room = self.limit - len(self.buf)
            if room > 0:
                self.buf += segment[:room]
            self.cut += max(0, len(segment) - max(room, 0))

    def take(self) -> tuple[bytes, int]:
        line, cut = bytes(self.buf), self.cut
        self.buf.clear()
        self.cut = 0
        self.fresh = False
        return line, cut

    def __bool__(self) -> bool:
        return bool(self.buf)


class OutputView:
    """Turns a job's output chunks into the lines worth printing.

    :meth:`feed` and :meth:`close` return a list of items in order: a ``str`` is
    a line to show, an ``int`` the number of lines left out just before it.
    ``now`` is a monotonic clock reading in seconds.
    """

    def __init__(
        self,
        *,
        limit: int = LIMIT,
        rate: float = RATE,
        burst: int = BURST,
        tail: int = TAIL,
    ) -> None:
        self.limit = limit
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None
        self._partials: dict[int, _Partial] = {}
        self._skipped = 0
        # The last lines left out, shown once output slows down or ends.
        self._tail: deque[tuple[bytes, int]] = deque(maxlen=tail)

    def feed(self, data: bytes, now: float, stream: int = 1) -> list[str | int]:
        partial = self._partials.get(stream)
        if partial is None:
            partial = self._partials[stream] = _Partial(self.limit)
        first = data.find(b"\n")
        if first < 0:
            partial.extend(data)
            return []
        self._refill(now)
        out: list[str | int] = []
        partial.extend(data[:first])
        self._complete(*partial.take(), out)
        last = data.rfind(b"\n")
        start = first + 1
        if last > first:
            count = data.count(b"\n", start, last + 1)
            shown = min(count, int(self._tokens))
            for _ in range(shown):
                end = data.find(b"\n", start)
                self._complete(*self._cut(data[start:end]), out)
                start = end + 1
            left = count - shown
            if left:
                # Over budget: only the last few lines are worth a copy.
                keep = min(left, self._tail.maxlen or 0)
                self._skipped += left - keep
                tail_start = last
                for _ in range(keep):
                    tail_start = data.rfind(b"\n", start - 1, tail_start)
                for raw in data[tail_start + 1 : last].split(b"\n") if keep else ():
                    self._complete(*self._cut(raw), out)
        partial.extend(data[last + 1 :])
        return out

    def close(self) -> list[str | int]:
        """The job ended: its unfinished lines and the tail of what was left out."""
        out: list[str | int] = []
        for partial in self._partials.values():
            if partial:
                self._complete(*partial.take(), out, force=True)
        self._flush(out)
        return out

    def _cut(self, line: bytes) -> tuple[bytes, int]:
        seg = visible(line)
        return seg[: self.limit], max(0, len(seg) - self.limit)

    def _refill(self, now: float) -> None:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def _complete(
        self, line: bytes, cut: int, out: list[str | int], *, force: bool = False
    ) -> None:
        if self._tokens < 1 and not force:
            if len(self._tail) == self._tail.maxlen:
                self._skipped += 1
            self._tail.append((line, cut))
            return
        if force or self._tokens >= len(self._tail) + 1:
            # Output slowed down enough to afford the lines kept from the flood.
            self._tokens -= len(self._tail)
            self._flush(out)
        else:
            # Still flooding: a line now and then, and the kept ones are only counted.
            self._skipped += len(self._tail)
            self._tail.clear()
            self._flush(out)
        self._tokens = max(0.0, self._tokens - 1)
        out.append(_render(line, cut))

    def _flush(self, out: list[str | int]) -> None:
        if self._skipped:
            out.append(self._skipped)
            self._skipped = 0
        out.extend(_render(line, cut) for line, cut in self._tail)
        self._tail.clear()


def _render(line: bytes, cut: int) -> str:
    text = sanitize(line)
    return f"{text} … [{cut:,} more bytes in the log]" if cut else text
