"""Secret ``-e NAME=VALUE`` values stay out of the history store.

Pure. A container spec is recorded before its job is launched and kept for
``status``, ``stop`` and ``resubmit``; the store is a file on disk. So before
recording, each ``Env`` entry that looks secret is cut down to its bare name
and the name is listed in the job's details (``secret_env``). Just before the
container is created the value is put back: from the command line of this run,
or, for ``caliban resubmit`` (or a later run settling this job), from
caliban's own environment, as ``docker run -e NAME`` would do. A resubmit whose
environment lacks the variable stops with one line naming it.

An entry is secret when its name contains PASSWORD, PASSWD, SECRET, TOKEN, KEY,
CREDENTIAL, AUTH, PRIVATE, COOKIE or SESSION (any case), or when its value is a
URL carrying a password (``postgres://user:pw@host/db``). Names of variables
caliban sets itself (``CALIBAN_*``) never are.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["DETAILS_KEY", "is_secret", "redact", "redact_argv", "restore", "shown"]

DETAILS_KEY = "secret_env"

_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE|COOKIE|SESSION", re.IGNORECASE
)
_URL_WITH_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:[^/@\s]+@")


class MissingSecret(Exception):
    """A recorded job needs a variable this environment does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def is_secret(name: str, value: str) -> bool:
    if name.startswith("CALIBAN_"):
        return False
    return bool(_NAME.search(name)) or bool(_URL_WITH_PASSWORD.match(value))


def redact(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``spec`` with secret ``Env`` values removed, and the removed ``{name: value}``."""
    out = copy.deepcopy(dict(spec))
    values: dict[str, str] = {}
    env: list[str] = []
    for entry in out.get("Env") or []:
        name, has_value, value = str(entry).partition("=")
        if has_value and is_secret(name, value):
            values[name] = value
            env.append(name)
        else:
            env.append(entry)
    if values:
        out["Env"] = env
    return out, values


def restore(
    spec: Mapping[str, Any], names: Iterable[str], *sources: Mapping[str, str]
) -> dict[str, Any]:
    """``spec`` with each bare ``names`` entry given its value from the first source having it.

    Raises :class:`MissingSecret` for a name no source holds.
    """
    wanted = set(names)
    if not wanted:
        return dict(spec)
    out = copy.deepcopy(dict(spec))
    env: list[str] = []
    for entry in out.get("Env") or []:
        if entry in wanted:
            for source in sources:
                if entry in source:
                    env.append(f"{entry}={source[entry]}")
                    break
            else:
                raise MissingSecret(entry)
        else:
            env.append(entry)
    out["Env"] = env
    return out


def names_of(details: Mapping[str, Any]) -> list[str]:
    """The secret variable names recorded in a job's details."""
    found = details.get(DETAILS_KEY) or []
    return [str(n) for n in found] if isinstance(found, list) else []


def shown(env: Sequence[str]) -> list[str]:
    """``Env`` entries for display: secret values replaced by ``***``."""
    out: list[str] = []
    for entry in env:
        name, has_value, value = entry.partition("=")
        out.append(f"{name}=***" if has_value and is_secret(name, value) else entry)
    return out


# One word of a command line that sets a variable, after any ``--flag=`` in front:
# ``DB_PASSWORD=x``, ``--env=DB_PASSWORD=x``.
_SETTING = re.compile(
    r"^(?P<pre>(?:--?[A-Za-z][\w-]*=)*)(?P<name>[A-Za-z_]\w*)=(?P<value>.*)$", re.S
)


def _word(word: str) -> str:
    found = _SETTING.match(word)
    if found and is_secret(found["name"], found["value"]):
        return found["pre"] + found["name"]
    return word


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line as the history may keep it: each secret ``NAME=VALUE`` (also
    inside a quoted ``--docker_run_args`` string) cut down to ``NAME``, which Docker
    reads from the environment, as :func:`redact` does for container specs."""
    out: list[str] = []
    for arg in argv:
        if not any(c.isspace() for c in arg):
            out.append(_word(arg))
            continue
        try:
            words = shlex.split(arg)
        except ValueError:
            # Unbalanced quotes: no telling where a value ends, so none of it is kept.
            secret = any(_word(w.strip("'\"")) != w.strip("'\"") for w in arg.split())
            out.append("<not recorded: holds a secret>" if secret else arg)
            continue
        kept = [_word(w) for w in words]
        out.append(shlex.join(kept) if kept != words else arg)
    return out
