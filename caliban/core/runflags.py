"""The table of ``docker run`` flags, and the flags it maps onto create-body fields.

``caliban/data/docker_run_flags.json`` lists every flag of ``docker run``
(docker CLI 20.10) in one of four groups: ``mapped`` (a field of the
container-create body and a value kind, parsed here), ``handled`` (parsed by
:mod:`caliban.core.dockerargs`, whose values need more than a kind), ``owned``
(caliban's to set, refused) and ``client_only`` (docker CLI behaviour with no
create-body field, refused). A test checks each field against the Engine API
schema in ``caliban/data/engine_api/``. Pure: the table is package data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from caliban.core.docker_values import _go_int, error, parse_size

__all__ = ["MappedFlag", "deep_merge", "flag_table", "parse_mapped", "set_field"]

#: Kinds whose flag takes no value.
SWITCH_KINDS = frozenset({"bool", "no-healthcheck"})
#: Kinds that repeat: each use adds to a list or map instead of replacing.
_LIST_KINDS = frozenset(
    {"list", "endpoint-list", "weight-device", "throttle-bytes", "throttle-int"}
)
_MAP_KINDS = frozenset({"map", "label-file"})


@dataclass(frozen=True)
class MappedFlag:
    long: str
    field: str
    kind: str
    short: str | None = None

    @property
    def takes_value(self) -> bool:
        return self.kind not in SWITCH_KINDS


@dataclass(frozen=True)
class FlagTable:
    mapped: Mapping[str, MappedFlag]
    handled: Mapping[str, str]
    owned: Mapping[str, str]
    client_only: Mapping[str, str]

    def refusal(self, flag: str) -> str | None:
        """Why ``flag`` cannot be given, or None when it may be."""
        return self.owned.get(flag) or self.client_only.get(flag)


@cache
def flag_table() -> FlagTable:
    text = resources.files("caliban").joinpath("data/docker_run_flags.json").read_text("utf-8")
    raw = json.loads(text)
    mapped = {
        name: MappedFlag(name, entry["field"], entry["kind"], entry.get("short"))
        for name, entry in raw["mapped"].items()
    }
    return FlagTable(mapped, raw["handled"], raw["owned"], raw["client_only"])


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NANOS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go duration such as ``30s`` or ``1m30s``; ``ValueError`` if not one."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
    if body == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(text)
        total += float(m[1]) * _NANOS[m[2]]
        pos = m.end()
    if not body:
        raise ValueError(text)
    return sign * int(total)


def _int(flag: str, value: str, low: int | None = None, high: int | None = None) -> int:
    try:
        number = _go_int(value)
    except ValueError:
        raise error(f"{flag} {value}: expected an integer") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise error(f"{flag} {value}: must be between {low} and {high}")
    return number


def _bytes(flag: str, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise error(f"{flag} {value}: expected a size such as 512m or 2g") from None


def _device_pair(flag: str, value: str) -> tuple[str, str]:
    path, has_value, amount = value.rpartition(":")
    if not has_value or not path.startswith("/dev/"):
        raise error(f"{flag} {value}: expected /dev/<device>:<value>")
    return path, amount


def _pair(flag: str, value: str) -> tuple[str, str]:
    key, has_value, text = value.partition("=")
    if not has_value or not key:
        raise error(f"{flag} {value}: expected key=value")
    return key, text


def _label_file(flag: str, path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise error(f"{flag} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise error(f"{flag} {path}: not UTF-8") from None
    labels: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, text = line.partition("=")
            labels[key] = text
    return labels


def parse_mapped(flag: str, spec: MappedFlag, value: str | bool) -> Any:
    """The create-body value of one use of a mapped flag.

    Switches get a bool; for repeatable kinds the result is one list item or a
    one-entry map, which :func:`set_field` adds to what is there.
    """
    kind = spec.kind
    if kind == "bool":
        return value
    if kind == "no-healthcheck":
        return ["NONE"] if value else None
    assert isinstance(value, str)
    if kind in ("string", "list", "endpoint", "endpoint-list"):
        return value
    if kind == "int":
        return _int(flag, value)
    if kind == "uint16":
        return _int(flag, value, 0, 65535)
    if kind == "bytes":
        return _bytes(flag, value)
    if kind == "swap-bytes":
        # -1 is docker's "unlimited swap", not a size.
        return -1 if value == "-1" else _bytes(flag, value)
    if kind == "duration":
        try:
            return parse_duration(value)
        except ValueError:
            raise error(f"{flag} {value}: expected a duration such as 30s or 1m30s") from None
    if kind == "health-cmd":
        return ["CMD-SHELL", value]
    if kind == "map":
        return dict([_pair(flag, value)])
    if kind == "label-file":
        return _label_file(flag, value)
    if kind == "weight-device":
        path, weight = _device_pair(flag, value)
        return {"Path": path, "Weight": _int(flag, weight, 10, 1000)}
    if kind == "throttle-bytes":
        path, rate = _device_pair(flag, value)
        return {"Path": path, "Rate": _bytes(flag, rate)}
    if kind == "throttle-int":
        path, rate = _device_pair(flag, value)
        return {"Path": path, "Rate": _int(flag, rate, 0)}
    raise AssertionError(f"unknown kind {kind!r} for {flag}")


def set_field(body: dict[str, Any], path: str, kind: str, value: Any) -> None:
    """Put ``value`` at the dotted ``path`` of ``body``: repeatable kinds add to it."""
    *parents, leaf = path.split(".")
    target = body
    for part in parents:
        target = target.setdefault(part, {})
    if kind in _LIST_KINDS:
        target.setdefault(leaf, []).append(value)
    elif kind in _MAP_KINDS:
        target.setdefault(leaf, {}).update(value)
    elif value is not None:
        target[leaf] = value


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` merged into a copy of ``base``: maps recursively, lists appended,
    anything else replaced. How user fragments meet what caliban set."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = deep_merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = [*old, *value]
        else:
            out[key] = value
    return out
