"""Google Cloud labels: sanitising, labels from script arguments, merging.

Google accepts at most 64 labels per resource; keys match
``^[a-z][a-z0-9_-]{0,62}$`` and values ``^[a-z0-9_-]{0,63}$`` (ASCII form of
the rule). Everything here produces labels inside those limits, so a job is
never refused for its labels.

Sanitising follows the original tool, so existing label queries keep working:
``.`` becomes ``_``, letters are lowercased, anything else outside
``[a-z0-9_-]`` is deleted, leading ``-`` are stripped, keys that do not start
with a letter get a ``k`` prefix, and both are cut to 63 characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from caliban.errors import ValidationError

MAX_LABELS = 64
MAX_LENGTH = 63
KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")

_INVALID = re.compile(r"[^a-z0-9_-]+")
_NUMBER = re.compile(r"-[0-9.]+(?:[eE][-+]?[0-9]+)?|-inf|-nan", re.IGNORECASE)


def sanitize_value(s: str | None) -> str:
    """A valid label value from any text; None becomes the empty value."""
    if s is None:
        return ""
    cleaned = _INVALID.sub("", s.replace(".", "_").lower()).lstrip("-")
    return cleaned[:MAX_LENGTH]


def sanitize_key(s: str) -> str:
    """A valid label key from any text, or ``""`` when nothing usable is left."""
    cleaned = sanitize_value(s)
    if cleaned and not cleaned[0].isalpha():
        cleaned = "k" + cleaned
    return cleaned[:MAX_LENGTH]


def _value_text(value: object) -> str | None:
    # JSON-style booleans, so `gpu_enabled` reads "true" as it always did.
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


def sanitize_labels(pairs: Iterable[tuple[str, object]]) -> dict[str, str]:
    """Sanitise key/value pairs; keys that sanitise to nothing are dropped.

    When two keys collapse to the same label the later pair wins.
    """
    labels: dict[str, str] = {}
    for key, value in pairs:
        clean = sanitize_key(key)
        if clean:
            labels[clean] = sanitize_value(_value_text(value))
    return labels


def _is_flag(token: str) -> bool:
    # "-0.5" is a negative number passed as a value, not a flag; the original
    # made a "k0_5" label out of it.
    return token.startswith("-") and _NUMBER.fullmatch(token) is None


def args_to_labels(argv: Sequence[str]) -> dict[str, str]:
    """Labels describing a job's script arguments.

    Each flag becomes a key; its value is the next token unless that token is
    itself a flag (then the value is empty). Positional tokens are ignored and
    a later repeat of a flag wins. ``--key=value`` is read as a flag and its
    value, which the original did not do.
    """
    pairs: list[tuple[str, str]] = []
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if not _is_flag(token):
            continue
        if "=" in token:
            key, _, value = token.partition("=")
            pairs.append((key, value))
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if following is None or _is_flag(following):
            pairs.append((token, ""))
        else:
            pairs.append((token, following))
    return sanitize_labels(pairs)


def parse_label_flag(text: str) -> tuple[str, str]:
    """Split the text of ``-l/--label KEY=VALUE`` at the first ``=``.

    The key is stripped of surrounding whitespace; the value is kept as is.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValidationError(
            f"label {text!r} has no '=': write it as KEY=VALUE",
            hint="for example: -l team=research",
        )
    if not sanitize_key(key):
        raise ValidationError(
            f"label {text!r} has no usable key: keys need letters or digits",
        )
    return key, value


def job_labels(
    *,
    base: Mapping[str, str],
    user: Mapping[str, str],
    args: Sequence[str],
    reserved: Mapping[str, str],
) -> dict[str, str]:
    """The labels of one job.

    Precedence, lowest first: caliban's ``base`` labels, the user's ``-l``
    labels, labels derived from the script arguments (as in the original, an
    argument overrides a ``-l`` label with the same key), and ``reserved``
    labels (such as the job id), which always win.

    Google's limit of 64 labels is met by dropping argument-derived labels
    that would add a new key, keeping the first ones in argument order; a job
    with many flags still gets submitted. Only if the reserved, base and user
    labels alone exceed the limit is that an error.
    """
    fixed = sanitize_labels(reserved.items())
    labels = sanitize_labels([*base.items(), *user.items()])
    room = MAX_LABELS - len(fixed.keys() | labels.keys())
    if room < 0:
        raise ValidationError(
            f"too many labels: {len(fixed.keys() | labels.keys())} given, "
            f"Google allows at most {MAX_LABELS}",
            hint="pass fewer -l/--label flags",
        )
    for key, value in args_to_labels(args).items():
        if key in fixed:
            continue
        if key in labels:
            labels[key] = value
        elif room > 0:
            labels[key] = value
            room -= 1
    labels.update(fixed)
    return labels


def is_valid_label(key: str, value: str) -> bool:
    """Whether Google accepts this key/value pair as it is."""
    return KEY_RE.fullmatch(key) is not None and VALUE_RE.fullmatch(value) is not None
