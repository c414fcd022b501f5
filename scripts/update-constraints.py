#!/usr/bin/env python3
"""Regenerate constraints.txt: the exact versions `make` and CI install.

    scripts/update-constraints.py [PYTHON ...]

For each interpreter (default: every one scripts/pythons.sh finds) a scratch
venv gets the newest releases pyproject.toml admits for `.[dev]`; the `pip
freeze` of each is merged into one file, with a python_full_version marker on
the packages whose newest release differs between interpreters (gcloud-aio-auth
5.6 needs 3.11.3+, hypothesis 6.169+ needs 3.11, ...). A marker's bound is the
next interpreter tried, so between two of them the older release is chosen, which
installs there too. Run it after changing a dependency range, then `make test`
and `make matrix`, and commit both files.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = "caliban-async"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze(python: str, scratch: Path) -> tuple[tuple[int, ...], dict[str, tuple[str, str]]]:
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    venv = scratch / version
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "install", "--quiet", f"{ROOT}[dev]"], check=True, stderr=subprocess.DEVNULL
    )
    out = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True).stdout
    pins: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        name, sep, pinned = line.partition("==")
        if sep and canonical(name) != SELF:
            pins[canonical(name)] = (name, pinned)
    print(f"  {python} ({version}): {len(pins)} packages", file=sys.stderr)
    return tuple(int(p) for p in version.split(".")[:3]), pins


def marker(low: tuple[int, ...] | None, high: tuple[int, ...] | None) -> str:
    parts = []
    if low is not None:
        parts.append(f'python_full_version >= "{".".join(map(str, low))}"')
    if high is not None:
        parts.append(f'python_full_version < "{".".join(map(str, high))}"')
    return " and ".join(parts)


def merge(freezes: list[tuple[tuple[int, ...], dict[str, tuple[str, str]]]]) -> list[str]:
    freezes.sort()
    names = sorted({n for _, pins in freezes for n in pins})
    lines = []
    for key in names:
        # Each interpreter stands for the versions from its own up to the next one's.
        runs: list[tuple[tuple[int, ...] | None, str, str]] = []
        for i, (version, pins) in enumerate(freezes):
            if key not in pins:
                continue  # not needed there: the constraint is moot
            name, pinned = pins[key]
            if runs and runs[-1][2] == pinned:
                continue
            runs.append((None if i == 0 else version, name, pinned))
        if len(runs) == 1:
            lines.append(f"{runs[0][1]}=={runs[0][2]}")
            continue
        for j, (low, name, pinned) in enumerate(runs):
            high = runs[j + 1][0] if j + 1 < len(runs) else None
            lines.append(f"{name}=={pinned}; {marker(low if j else None, high)}")
    return lines


def main(argv: list[str]) -> int:
    pythons = (
        argv
        or subprocess.run(
            [str(ROOT / "scripts" / "pythons.sh")], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    with tempfile.TemporaryDirectory() as scratch:
        freezes = [freeze(p, Path(scratch)) for p in pythons]
    header = [
        "# The exact versions `make` and CI install (pip install -c constraints.txt ...).",
        "# pyproject.toml holds the ranges; regenerate this file with",
        "#   scripts/update-constraints.py   (one scratch venv per interpreter found)",
        "# Tested with: " + ", ".join(".".join(map(str, v)) for v, _ in sorted(freezes)),
    ]
    (ROOT / "constraints.txt").write_text("\n".join([*header, *merge(freezes)]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
