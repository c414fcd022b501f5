"""What a project folder holds, checked before anything is built or run.

These functions touch the file system (stat calls only) and are called once
per command, off the event loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from caliban.dockerfile import REQUIREMENTS, SETUP_PY
from caliban.errors import ValidationError
from caliban.spec import EntryKind, Entrypoint


def resolve_entrypoint(target: str, folder: str | os.PathLike[str]) -> Entrypoint:
    """Turn what the user typed (``trainer.train``, ``trainer/train.py``, ``run.sh``)
    into what the image runs.

    Same rules as the original: an existing file wins; a dotted name whose
    ``.py`` file exists is a module; other files run with bash.
    """
    root = Path(folder)
    text = target.strip()
    if not text:
        raise ValidationError("no script or module given")
    rel = Path(text)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValidationError(
            f"{target!r} must be a path inside the project folder {root} (or a module name)"
        )
    norm = rel.as_posix()
    if (root / rel).is_file():
        kind = EntryKind.SCRIPT if norm.endswith(".py") else EntryKind.FILE
        return Entrypoint(kind, norm, _package_path(norm))
    as_module = text.replace(".", "/") + ".py"
    if not text.endswith(".py") and (root / as_module).is_file():
        return Entrypoint(EntryKind.MODULE, text, _package_path(as_module))
    raise ValidationError(
        f"{target!r} is neither a file nor a Python module in {root}",
        hint="give a path like trainer/train.py, a module like trainer.train, or cd to the "
        "project folder first",
    )


def _package_path(relpath: str) -> str:
    parts = relpath.split("/")
    return "." if len(parts) == 1 else parts[0]


@dataclass(frozen=True)
class ProjectFacts:
    requirements: bool
    setup_py: bool
    conda_env: bool


def inspect(folder: str | os.PathLike[str], extra_dirs: tuple[str, ...] = ()) -> ProjectFacts:
    root = Path(folder)
    if not root.is_dir():
        raise ValidationError(f"project folder {root} does not exist")
    for d in extra_dirs:
        p = Path(d)
        if p.is_absolute() or ".." in p.parts or not (root / p).is_dir():
            raise ValidationError(
                f"--dir {d!r} must be an existing folder inside the project folder {root}"
            )
    return ProjectFacts(
        requirements=(root / REQUIREMENTS).is_file(),
        setup_py=(root / SETUP_PY).is_file(),
        conda_env=(root / "environment.yml").is_file(),
    )
