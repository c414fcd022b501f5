"""Why a job likely failed, read from the end of its output (pure, standard library only).

``caliban logs --failed`` tags each failed job with one short cause so a sweep of
a hundred failures can be read at a glance. The rules look at the job's recorded
exit code and message (what the platform said) and at the tail of its output
(what the program said). Platform verdicts come first: a job killed for memory
often prints a traceback of whatever it was doing when the kernel stepped in, and
that traceback is not the cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Cause", "classify", "exception_type"]


@dataclass(frozen=True)
class Cause:
    """A likely cause: a stable ``kind`` (for ``--json`` and tests) and words for people."""

    kind: str
    text: str


OOM = Cause("oom", "killed for memory (exit 137 / OOMKilled)")
CUDA_OOM = Cause("cuda_oom", "CUDA out of memory")
PREEMPTED = Cause("preempted", "preempted")
IMAGE_PULL = Cause("image_pull", "image pull error")
QUOTA = Cause("quota", "quota exceeded")

# Order matters: the first family that matches wins. CUDA's own OOM is checked
# before the host's (a CUDA OOM never kills the process; a host OOM may print
# "out of memory" too), preemption and pulls before quota (their messages can
# mention resources).
_RULES: tuple[tuple[Cause, re.Pattern[str]], ...] = (
    (
        CUDA_OOM,
        re.compile(
            r"CUDA out of memory|cuda\.OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY"
            r"|CUDNN_STATUS_ALLOC_FAILED|OOM when allocating tensor"
            r"|RESOURCE_EXHAUSTED: Out of memory while trying to allocate",
            re.IGNORECASE,
        ),
    ),
    (
        OOM,
        re.compile(
            r"OOMKilled|exit(?:ed)?(?: with)?(?: a)?(?: non-zero)? (?:code|status)(?: of)? 137\b"
            r"|ran out[- ]of[- ]memory|Out of memory: Kill(?:ed)? process|oom[-_ ]kill"
            r"|^Killed$",
            re.IGNORECASE | re.MULTILINE,
        ),
    ),
    (
        PREEMPTED,
        re.compile(r"preempt(?:ed|ion|ible)|spot (?:vm|instance) .*reclaimed", re.IGNORECASE),
    ),
    (
        IMAGE_PULL,
        re.compile(
            r"ErrImagePull|ImagePullBackOff|Failed to pull image|pull access denied"
            r"|manifest unknown|manifest for .* not found|Unable to pull|image pull",
            re.IGNORECASE,
        ),
    ),
    (
        QUOTA,
        re.compile(
            r"quota (?:exceeded|metrics? exceed|limit)|exceeded (?:the )?quota"
            r"|Quota exceeded|insufficient quota|RESOURCE_EXHAUSTED",
            re.IGNORECASE,
        ),
    ),
)

_TRACEBACK = "Traceback (most recent call last):"
# The last line of a traceback: ``ValueError: bad`` or ``pkg.mod.CustomError`` alone,
# never indented (indented lines are frames and source).
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)(?::\s.*|:)?$")


def exception_type(lines: Sequence[str]) -> str | None:
    """The exception type named at the end of the last Python traceback in ``lines``."""
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip().endswith(_TRACEBACK):
            start = i
            break
    if start is None:
        return None
    for line in lines[start + 1 :]:
        text = line.rstrip()
        if not text or text[0].isspace():
            continue
        found = _EXCEPTION_LINE.match(text)
        # "During handling of the above exception..." and chained tracebacks are
        # prose, not a type; the loop above already picked the last traceback.
        if found and " " not in found[1]:
            return found[1].rsplit(".", 1)[-1] if found[1].startswith("__main__.") else found[1]
    return None


def classify(
    lines: Iterable[str], *, exit_code: int | None = None, message: str | None = None
) -> Cause | None:
    """The likely cause of a failure, or None when nothing in it says.

    ``lines`` is the end of the job's output; ``exit_code`` and ``message`` are
    what its platform recorded (``exit code 137``, Vertex's error message...).
    """
    tail = [line.rstrip("\r\n") for line in lines]
    verdict = message or ""
    for cause, pattern in _RULES:
        if pattern.search(verdict):
            return cause
    if exit_code == 137:
        return OOM
    text = "\n".join(tail)
    for cause, pattern in _RULES:
        if pattern.search(text):
            return cause
    found = exception_type(tail)
    if found is not None:
        return Cause("exception", found)
    return None
