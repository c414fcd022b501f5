"""What a project folder holds, checked before anything is built or run.

These functions touch the file system (stat calls only) and are called once
per command, off the event loop.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path

from caliban.core.dockerfile import REQUIREMENTS, SETUP_PY
from caliban.core.dockerignore import IGNORE_FILE, DockerIgnore
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
        _inside(root, norm, target)
        kind = EntryKind.SCRIPT if norm.endswith(".py") else EntryKind.FILE
        return Entrypoint(kind, norm, _package_path(norm))
    as_module = text.replace(".", "/") + ".py"
    if not text.endswith(".py") and (root / as_module).is_file():
        _inside(root, as_module, target)
        return Entrypoint(EntryKind.MODULE, text, _package_path(as_module))
    raise ValidationError(
        f"{target!r} is neither a file nor a Python module in {root}",
        hint="give a path like trainer/train.py, a module like trainer.train, or cd to the "
        "project folder first",
    )


def _inside(root: Path, relpath: str, target: str) -> None:
    """Refuse an entry point the image would not hold: one that resolves (through
    a symlink) outside the project folder, or one .dockerignore leaves out."""
    real = (root / relpath).resolve()
    if not real.is_relative_to(root.resolve()):
        raise ValidationError(
            f"{target!r} is a link to {real}, outside the project folder {root}; "
            "the image would not contain it"
        )
    if DockerIgnore.load(root).excluded(relpath):
        raise ValidationError(
            f"{target!r} is excluded by {root / IGNORE_FILE}, so the image would not "
            "contain it; remove the pattern that matches it"
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
        real = (root / p).resolve()
        if not real.is_relative_to(root.resolve()):
            raise ValidationError(
                f"--dir {d!r} leads to {real}, outside the project folder {root}; "
                "give a folder that is really inside it"
            )
    return ProjectFacts(
        requirements=(root / REQUIREMENTS).is_file(),
        setup_py=(root / SETUP_PY).is_file(),
        conda_env=(root / "environment.yml").is_file(),
    )


def _normalize_extra(name: str) -> str:
    # pip compares extras by their normalized name (PEP 685).
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_extras(folder: str | os.PathLike[str]) -> frozenset[str] | None:
    """The extras ``setup.py`` declares, normalized, when its ``extras_require`` is a
    literal dict (directly or through a module-level name); None when it cannot be
    told without running setup.py."""
    path = Path(folder) / SETUP_PY
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    literals: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                literals[target.id] = node.value
    found: set[str] = set()
    calls = 0
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name != "setup":
            continue
        calls += 1
        for keyword in call.keywords:
            if keyword.arg is None:
                return None  # setup(**kwargs): anything may be in there
            if keyword.arg != "extras_require":
                continue
            value = keyword.value
            if isinstance(value, ast.Name):
                value = literals.get(value.id, value)
            if not isinstance(value, ast.Dict):
                return None
            for key in value.keys:
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    return None
                found.add(_normalize_extra(key.value))
    return frozenset(found) if calls == 1 else None


def check_extras(folder: str | os.PathLike[str], extras: tuple[str, ...], setup_py: bool) -> None:
    """Refuse ``--extras`` the build would ignore or pip would only warn about."""
    if not extras:
        return
    shown = ", ".join(repr(e) for e in extras)
    if not setup_py:
        raise ValidationError(
            f"--extras {shown}: the project has no {SETUP_PY}, so there are no extras to install"
        )
    known = declared_extras(folder)
    if known is None:
        return
    missing = [e for e in extras if _normalize_extra(e) not in known]
    if missing:
        have = ", ".join(sorted(known)) or "none"
        raise ValidationError(
            f"--extras {', '.join(repr(e) for e in missing)}: not in extras_require of "
            f"{Path(folder) / SETUP_PY} (it declares: {have})"
        )
