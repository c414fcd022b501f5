"""Parsed flags to the library's values, shared by every command that builds an image.

Each reads the file or text a flag names and raises ``ValidationError`` on bad
input, so a command fails before any engine is contacted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def project_options(ns: argparse.Namespace, *, entry: str | None) -> Any:
    from caliban.options import ProjectOptions

    return ProjectOptions(
        folder=Path.cwd(),
        entry=entry,
        use_gpu=ns.use_gpu,
        extra_dirs=tuple(ns.dirs) if hasattr(ns, "dirs") else (),
        extras=tuple(ns.extras),
        no_cache=ns.no_cache,
        image_id=getattr(ns, "image_id", None),
    )


def experiments(ns: argparse.Namespace) -> object | None:
    """Load and validate the experiment config before anything starts."""
    if not getattr(ns, "experiment_config", None):
        return None
    from caliban.core import experiment

    return experiment.load(ns.experiment_config)


def docker_run_args(text: str | None) -> tuple[str, ...]:
    import shlex

    if not text:
        return ()
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        from caliban.errors import ValidationError

        raise ValidationError(f"--docker_run_args: {exc}") from exc


def docker_create_json(path: str | None) -> dict[str, Any] | None:
    from caliban.core.createjson import read_fragment

    return read_fragment(path) if path else None
