"""Experiment configs: load, validate and lazily expand sweeps into jobs.

An experiment config is JSON (``#`` and ``//`` comments allowed) whose top
level is an object or a list. An object is a sweep: every list value is a set
of alternatives and the jobs are the cartesian product of them. A list is a
concatenation of configs. ``docs/experiments.md`` describes the rules, the job
order and where this module parts ways with the original tool.

The pipeline is ``load``/``validate`` (all checks, no expansion) then
``expand`` (a generator) and ``to_argv``. Once ``validate`` has returned,
``expand`` cannot fail, so a bad config never starts a single job.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import shlex
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TextIO, TypeAlias, cast

from caliban.errors import ConfigError, ExperimentConfigError

Scalar: TypeAlias = str | int | float | bool
Value: TypeAlias = "str | int | float | bool | list[Value]"
Experiment: TypeAlias = dict[str, Value]
"""One expanded job: flag name to value, keys in config order."""

_TOKEN = r"[^\s,\[\]]+"
_PLAIN_KEY = re.compile(_TOKEN)
_COMPOUND_KEY = re.compile(rf"\[\s*{_TOKEN}(?:\s*,\s*{_TOKEN})*\s*\]")

# A JSON string literal, or a comment that runs to the end of its line. Strings
# are matched first so comment markers inside them ("http://x") are left alone.
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|(?:#|//)[^\n]*')


# --------------------------------------------------------------------------
# Parsed form


@dataclass(frozen=True, slots=True)
class _Axis:
    """One key of a config object: the flags it sets and its alternatives.

    Every alternative holds one value per name; a plain key has one name.
    """

    key: str
    names: tuple[str, ...]
    choices: tuple[tuple[Value, ...], ...]


@dataclass(frozen=True, slots=True)
class _Block:
    """One config object, ready for the product."""

    axes: tuple[_Axis, ...]

    @property
    def size(self) -> int:
        n = 1
        for axis in self.axes:
            n *= len(axis.choices)
        return n


@dataclass(frozen=True, eq=False, slots=True)
class Config:
    """A validated experiment config.

    ``raw`` is a private copy of the JSON data as given (for records and
    round trips); the blocks hold what ``expand`` needs.
    """

    blocks: tuple[_Block, ...]
    raw: object


# --------------------------------------------------------------------------
# Loading


def parse_json(
    text: str, source: str, *, error: type[ConfigError] = ExperimentConfigError
) -> object:
    """Parse JSON that may carry ``#`` or ``//`` comments to the end of a line.

    Comments are blanked out rather than removed with their line, so the line
    numbers in error messages still point into the user's file.
    """
    stripped = _STRING_OR_COMMENT.sub(_keep_strings, text)
    if not stripped.strip():
        raise error(f"{source}: is empty, expected JSON")
    try:
        return json.loads(
            stripped,
            object_pairs_hook=partial(_unique_keys, source, error),
            parse_constant=partial(_no_constant, source, error),
            parse_float=partial(_finite, source, error),
        )
    except json.JSONDecodeError as exc:
        raise error(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise error(f"{source}: JSON is nested too deeply") from None


def _unique_keys(
    source: str, error: type[ConfigError], pairs: list[tuple[str, object]]
) -> dict[str, object]:
    # json keeps the last of duplicate keys silently, so a typo'd copy of a key
    # would quietly replace the sweep the user meant.
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise error(f"{source}: key {key!r} appears twice in the same object")
        out[key] = value
    return out


def _no_constant(source: str, error: type[ConfigError], name: str) -> float:
    raise error(f"{source}: {name} is not a JSON number; write a finite number or a string")


def _finite(source: str, error: type[ConfigError], text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise error(f"{source}: number {text} is too large for a float")
    return value


def _keep_strings(match: re.Match[str]) -> str:
    token = match.group(0)
    return token if token.startswith('"') else ""


def load(source: str, stdin: TextIO | None = None) -> Config:
    """Read and validate a config from a file path, or from stdin for ``stdin``."""
    if source.strip().lower() == "stdin":
        stream = sys.stdin if stdin is None else stdin
        name = "experiment config (stdin)"
        try:
            text = stream.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ExperimentConfigError(f"{name}: cannot read: {exc}") from None
    else:
        name = f"experiment config {source}"
        try:
            with open(source, encoding="utf-8-sig") as f:
                text = f.read()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ExperimentConfigError(f"{name}: cannot read: {reason}") from None
        except UnicodeDecodeError:
            raise ExperimentConfigError(f"{name}: cannot read: not UTF-8 text") from None
    return validate(parse_json(text, name), source=name)


# --------------------------------------------------------------------------
# Validation


def validate(config: object, *, source: str = "experiment config") -> Config:
    """Check a parsed config completely and prepare it for expansion.

    Raises ExperimentConfigError naming the offending key or value. Every
    check that expansion could trip over happens here. An already validated
    :class:`Config` is returned as is.
    """
    if isinstance(config, Config):
        return config
    raw = copy.deepcopy(config)
    if not isinstance(raw, dict | list):
        raise ExperimentConfigError(
            f"{source}: must be a JSON object or a list of them, not {_show(raw)}"
        )
    blocks: list[_Block] = []
    _collect(raw, source, (), blocks)
    return Config(tuple(blocks), raw)


def _collect(node: object, source: str, path: tuple[int, ...], out: list[_Block]) -> None:
    # Walk nested lists depth first so blocks come out in concatenation order.
    if isinstance(node, list):
        for i, item in enumerate(node):
            _collect(item, source, (*path, i), out)
    elif isinstance(node, dict):
        out.append(_block(node, _where(source, path)))
    else:
        raise ExperimentConfigError(
            f"{_where(source, path)}: list items must be JSON objects or lists, not {_show(node)}"
        )


def _where(source: str, path: tuple[int, ...]) -> str:
    if not path:
        return source
    return f"{source}, item {''.join(f'[{i}]' for i in path)}"


def _block(obj: Mapping[object, object], where: str) -> _Block:
    # Compound keys that differ only in spacing ("[a,b]", "[a, b]") name the
    # same flags. The original merged them keeping the first one's value in the
    # last one's place; copying that keeps old configs expanding identically.
    merged: dict[object, _Axis] = {}
    for key, value in obj.items():
        axis = _axis(key, value, where)
        identity: object = axis.names if axis.key.startswith("[") else axis.key
        first = merged.pop(identity, None)
        merged[identity] = axis if first is None else first
    return _Block(tuple(merged.values()))


def _axis(key: object, value: object, where: str) -> _Axis:
    if not isinstance(key, str):
        raise ExperimentConfigError(f"{where}: key {key!r} is not a string")
    if "\0" in key:
        raise ExperimentConfigError(f"{where}: key {key!r} contains a NUL byte")
    if _PLAIN_KEY.fullmatch(key):
        if isinstance(value, list):
            return _Axis(key, (key,), tuple((_checked(item, key, where),) for item in value))
        return _Axis(key, (key,), ((_checked(value, key, where),),))
    if not _COMPOUND_KEY.fullmatch(key):
        if any(c in key for c in "[],"):
            raise ExperimentConfigError(f"{where}: key {key!r} is not a valid compound key")
        raise ExperimentConfigError(
            f"{where}: key {key!r} is not a valid flag name (no whitespace, commas or brackets)"
        )
    names = tuple(part.strip() for part in key[1:-1].split(","))
    return _Axis(key, names, _compound_choices(key, names, value, where))


def _compound_choices(
    key: str, names: tuple[str, ...], value: object, where: str
) -> tuple[tuple[Value, ...], ...]:
    n = len(names)
    if not isinstance(value, list):
        raise ExperimentConfigError(
            f"{where}: compound key {key!r} needs a list of {n} values "
            f"or a list of such lists, not {_show(value)}"
        )
    if not value:
        raise ExperimentConfigError(f"{where}: compound key {key!r} has an empty list of values")
    # As in the original, the first element decides: a list means "a list of
    # alternatives", anything else means "one alternative, flat".
    rows: list[object] = value if isinstance(value[0], list) else [value]
    choices: list[tuple[Value, ...]] = []
    for row in rows:
        if not isinstance(row, list):
            raise ExperimentConfigError(
                f"{where}: compound key {key!r} mixes lists and single values: {_show(row)}"
            )
        if len(row) != n:
            raise ExperimentConfigError(
                f"{where}: compound key {key!r} names {n} flags "
                f"but value {_show(row)} has {len(row)}"
            )
        choices.append(tuple(_checked(item, key, where) for item in row))
    return tuple(choices)


def _checked(value: object, key: str, where: str) -> Value:
    """``value`` itself, once it is known to be a flag value at every depth."""
    # A process argument cannot hold a NUL byte, and nan/inf would reach the
    # script as text that no flag parser reads back as the number meant.
    if isinstance(value, str):
        if "\0" in value:
            raise ExperimentConfigError(
                f"{where}: value {_show(value)} of key {key!r} contains a NUL byte"
            )
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ExperimentConfigError(
            f"{where}: value {value!r} of key {key!r} is not a finite number"
        )
    if isinstance(value, int | float):  # bool is an int
        return value
    if isinstance(value, list):
        for item in value:
            _checked(item, key, where)
        return cast("Value", value)
    raise ExperimentConfigError(
        f"{where}: value {_show(value)} of key {key!r} is not allowed: "
        "values must be strings, numbers, booleans or lists of them"
    )


def _show(value: object, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------
# Expansion


def count(config: Config) -> int:
    """The number of jobs ``expand`` yields, computed without expanding."""
    return sum(block.size for block in config.blocks)


DEFAULT_MAX_SWEEP = 10_000
"""Jobs one command may plan unless told more (``--max_sweep``)."""


def check_size(config: Config, max_sweep: int = DEFAULT_MAX_SWEEP) -> int:
    """``count(config)``, or ExperimentConfigError when it is above ``max_sweep``.

    Arithmetic on the list lengths, so a config that would expand to 10**40
    jobs is refused at once instead of being planned until the disk fills.
    """
    total = count(config)
    if total > max_sweep:
        digits = len(str(total))
        size = str(total) if digits <= 15 else f"about 10^{digits - 1}"
        raise ExperimentConfigError(
            f"the experiment config expands to {size} jobs, more than the limit of "
            f"{max_sweep}; pass --max_sweep {total if digits <= 15 else 'N'} "
            "if you mean it"
        )
    return total


def expand(config: Config) -> Iterator[Experiment]:
    """Yield the jobs of a config one at a time, in the original tool's order.

    Blocks (the objects of a list config) follow each other in list order.
    Within an object the **first key varies fastest** and the last slowest,
    which is what the original did on CPython 3.9 and later; each job's keys
    keep config order, with compound keys unzipped in place.

    Memory use does not depend on the number of jobs. The dicts yielded are
    fresh, but list-valued flags are shared between jobs: do not mutate them.
    """
    for block in config.blocks:
        yield from _expand_block(block)


def _expand_block(block: _Block) -> Iterator[Experiment]:
    axes = block.axes[::-1]  # itertools.product varies its last input fastest
    if all(len(axis.names) == 1 for axis in axes):
        names = tuple(axis.names[0] for axis in block.axes)
        columns = [tuple(choice[0] for choice in axis.choices) for axis in axes]
        for point in itertools.product(*columns):
            yield dict(zip(names, point[::-1], strict=True))
        return
    # With duplicate names zip+dict keeps the first position and the last
    # value, which is how the original merged overlapping keys.
    flat = tuple(name for axis in block.axes for name in axis.names)
    chain = itertools.chain.from_iterable
    for rows in itertools.product(*(axis.choices for axis in axes)):
        yield dict(zip(flat, chain(rows[::-1]), strict=True))


def expand_all(config: Config) -> list[Experiment]:
    """Every job as a list; for small configs and tests."""
    return list(expand(config))


# --------------------------------------------------------------------------
# Rendering


def to_argv(experiment: Mapping[str, Value], base: Sequence[str] = ()) -> list[str]:
    """Command-line arguments for one job: ``base`` first, then the flags.

    Flags follow the experiment's key order (the order of the config), not
    alphabetical order: the original sorted them in ``run``/``cloud`` only
    because it read them back from its database, which made ``expansion
    --print_flags`` disagree with what jobs received. ``true`` gives a bare
    ``--key``, ``false`` drops the flag, anything else is ``str(value)``.
    """
    argv = list(base)
    append = argv.append
    for key, value in experiment.items():
        # bool has exactly two instances, so identity is the fast isinstance.
        if value is True or value is False:
            if value:
                append("--" + key)
        else:
            append("--" + key)
            append(str(value))
    return argv


def flags_line(experiment: Mapping[str, Value], base: Sequence[str] = ()) -> str:
    """``to_argv`` as one shell-quoted line that can be pasted into a shell.

    The original joined the arguments with bare spaces, so a value such as
    ``x y`` or ``[1, 2]`` came back as several words; quoting fixes that and
    leaves every other line unchanged.
    """
    return shlex.join(to_argv(experiment, base))


def iter_json(experiments: Iterable[Experiment], *, indent: int | None = None) -> Iterator[str]:
    """Chunks whose concatenation equals ``json.dumps(list(experiments), indent=...)``.

    Lets the ``expansion`` command stream a huge sweep without holding it.
    """
    if indent is None:
        sep, opening, closing = ", ", "[", "]"
    else:
        sep, opening, closing = ",\n", "[\n", "\n]"
    pad = " " * (indent or 0)
    started = False
    for experiment in experiments:
        text = json.dumps(experiment, indent=indent)
        if indent is not None:
            # Nesting one level deeper adds one indent to every line; JSON
            # strings never contain raw newlines, so splitting is safe.
            text = "\n".join(pad + line for line in text.split("\n"))
        yield (sep if started else opening) + text
        started = True
    yield closing if started else "[]"
