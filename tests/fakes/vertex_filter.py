"""List support for the fake CustomJob API: the ``filter`` language and page tokens.

The filter is Vertex AI's AIP-160 subset. Supported, as documented for ``customJobs.list``:

- ``display_name = "x"`` / ``!=``; ``display_name : "exp_*"`` (``:`` matches ``*`` wildcards)
- ``state = "JOB_STATE_RUNNING"`` / ``state != JOB_STATE_FAILED`` (quotes optional)
- ``labels.KEY = VALUE`` / ``!=``; ``labels.KEY : *`` and ``labels : KEY`` (key present)
- ``create_time`` / ``update_time`` / ``start_time`` / ``end_time`` with ``= != < <= > >=``
  against a quoted RFC 3339 timestamp
- ``AND``, ``OR``, ``NOT`` / ``-``, parentheses, and juxtaposition as an implicit AND.

As in AIP-160, ``OR`` binds tighter than ``AND``: ``a AND b OR c`` is ``a AND (b OR c)``.
Anything else raises :class:`FilterError`, which the fake answers with 400 INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from .vertex_schema import JOB_STATES

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<op><=|>=|!=|=|<|>|:)|(?P<paren>[()])'
    r'|(?P<word>[^\s()"=<>!:]+))'
)
_TIME_FIELDS = {"create_time", "update_time", "start_time", "end_time"}
_CAMEL_ALIASES = {
    "displayName": "display_name",
    "createTime": "create_time",
    "updateTime": "update_time",
    "startTime": "start_time",
    "endTime": "end_time",
}


class FilterError(ValueError):
    """The filter text is malformed or uses something the API does not support."""


class _Tok:
    def __init__(self, kind: str, text: str) -> None:
        self.kind, self.text = kind, text


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"Provided filter is invalid near: {text[pos:]!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append(_Tok(kind, value))
        pos = m.end()
    return tokens


class _Parser:
    """Recursive descent over the token list; each rule returns a predicate."""

    def __init__(self, tokens: list[_Tok]) -> None:
        self.toks, self.i = tokens, 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise FilterError("Provided filter is invalid: unexpected end of filter")
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text == word

    def expression(self) -> Predicate:
        # expression := sequence (("AND")? sequence)*   -- juxtaposition is an implicit AND
        parts = [self.sequence()]
        while (tok := self.peek()) is not None and not (tok.kind == "paren" and tok.text == ")"):
            if self.is_word("AND"):
                self.take()
            parts.append(self.sequence())
        return lambda job: all(p(job) for p in parts)

    def sequence(self) -> Predicate:
        # sequence := factor ("OR" factor)*   -- OR binds tighter than AND in AIP-160
        parts = [self.factor()]
        while self.is_word("OR"):
            self.take()
            parts.append(self.factor())
        return lambda job: any(p(job) for p in parts)

    def factor(self) -> Predicate:
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.text == "NOT":
            self.take()
            inner = self.factor()
            return lambda job: not inner(job)
        if tok is not None and tok.kind == "word" and tok.text.startswith("-"):
            # "-labels.x:*" negates what follows: strip the minus (or drop a lone "-").
            if tok.text == "-":
                self.take()
            else:
                self.toks[self.i] = _Tok("word", tok.text[1:])
            inner = self.factor()
            return lambda job: not inner(job)
        if tok is not None and tok.kind == "paren" and tok.text == "(":
            self.take()
            inner = self.expression()
            close = self.take()
            if close.text != ")":
                raise FilterError("Provided filter is invalid: missing ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        name = self.take()
        if name.kind != "word" or name.text in ("AND", "OR"):
            raise FilterError(f"Provided filter is invalid near {name.text!r}")
        op = self.take()
        if op.kind != "op":
            raise FilterError(f"Provided filter is invalid: {name.text!r} needs an operator")
        value = self.take()
        if value.kind not in ("word", "str"):
            raise FilterError(f"Provided filter is invalid near {value.text!r}")
        return _compare(name.text, op.text, value.text)


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FilterError(f"Provided filter is invalid: bad timestamp {text!r}") from exc


def _compare(field: str, op: str, value: str) -> Predicate:
    field = _CAMEL_ALIASES.get(field, field)
    if field == "state":
        if op not in ("=", "!=") or value not in JOB_STATES:
            raise FilterError(f"Provided filter is invalid: unsupported state filter {value!r}")
        return lambda job: (job.get("state") == value) == (op == "=")
    if field == "display_name":
        if op == ":":
            pattern = _wildcard(value)
            return lambda job: bool(pattern.match(job.get("displayName", "")))
        if op in ("=", "!="):
            return lambda job: (job.get("displayName", "") == value) == (op == "=")
        raise FilterError(f"Provided filter is invalid: display_name does not support {op!r}")
    if field == "labels":
        if op != ":":
            raise FilterError("Provided filter is invalid: use labels.KEY=VALUE or labels:KEY")
        return lambda job: value in job.get("labels", {})
    if field.startswith("labels."):
        key = field[len("labels.") :]
        if op == ":" and value == "*":
            return lambda job: key in job.get("labels", {})
        if op in ("=", ":"):
            return lambda job: job.get("labels", {}).get(key) == value
        if op == "!=":
            return lambda job: job.get("labels", {}).get(key) != value
        raise FilterError(f"Provided filter is invalid: labels do not support {op!r}")
    if field in _TIME_FIELDS:
        when = _time(value)
        json_name = "".join(p.capitalize() if i else p for i, p in enumerate(field.split("_")))
        compare: dict[str, Callable[[datetime], bool]] = {
            "=": lambda t: t == when,
            "!=": lambda t: t != when,
            "<": lambda t: t < when,
            "<=": lambda t: t <= when,
            ">": lambda t: t > when,
            ">=": lambda t: t >= when,
        }
        if op not in compare:
            raise FilterError(f"Provided filter is invalid: {field} does not support {op!r}")
        test = compare[op]
        return lambda job: json_name in job and test(_time(job[json_name]))
    raise FilterError(f"Provided filter is invalid: unsupported field {field!r}")


def compile_filter(text: str) -> Predicate:
    """Compile ``text`` to a predicate over a CustomJob's wire JSON; "" matches everything."""
    tokens = _tokenize(text)
    if not tokens:
        return lambda job: True
    parser = _Parser(tokens)
    predicate = parser.expression()
    rest = parser.peek()
    if rest is not None:
        raise FilterError(f"Provided filter is invalid near {rest.text!r}")
    return predicate


def page_token(before: int, filter_text: str) -> str:
    """A list page token: resume below creation sequence ``before`` under ``filter_text``."""
    # Opaque to clients, but bound to the filter: Google refuses a token reused with another one.
    digest = hashlib.sha256(filter_text.encode()).hexdigest()[:12]
    raw = json.dumps({"before": before, "filter": digest}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_page_token(token: str, filter_text: str) -> int | Literal[False] | None:
    """The sequence bound of a page token; None for no token, False when it is invalid."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        digest = hashlib.sha256(filter_text.encode()).hexdigest()[:12]
        if data["filter"] != digest:
            return False
        return int(data["before"])
    except (ValueError, KeyError, TypeError):
        return False
