"""``caliban config``: every setting's effective value and where it came from.

Reads the environment, the user file and the current folder's
``.calibanconfig.json`` exactly as the other commands do (through
:mod:`caliban.core.settings`), and builds, runs and records nothing. Settings hold
paths to key files, never their content, so nothing printed is a secret.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from caliban.errors import EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``config`` subcommand to caliban's parser."""
    p = sub.add_parser(
        "config",
        help="show each setting's effective value and its source",
        description="Show the value every setting takes here, and where it comes from: a "
        "flag, an environment variable, the project's .calibanconfig.json, the user file "
        "($CALIBAN_CONFIG, else $XDG_CONFIG_HOME/caliban/config.json, else "
        "~/.config/caliban/config.json) or the default. Flags of other commands win over "
        "all of these when given.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # The other commands' setting flags, so a command line can be previewed.
    p.add_argument("--nogpu", action="store_true", help="as `caliban run --nogpu`")
    for flag, name in _FLAGS.items():
        p.add_argument(
            flag, dest=_dest(name), metavar="VALUE", help=f"as for other commands ({name})"
        )
    p.set_defaults(handler=cmd_config)


# Flags of other commands that set one setting each (--nogpu is handled apart).
_FLAGS = {
    "--image_registry": "image_registry",
    "--project_id": "gcloud.project_id",
    "--region": "gcloud.region",
    "--quota_project": "gcloud.quota_project",
    "--cloud_key": "gcloud.cloud_key",
    "--kubeconfig": "kubeconfig",
    "--context": "kube_context",
    "--runtime": "slurm.runtime",
    "--bundle_dir": "slurm.bundle_dir",
}


def _dest(name: str) -> str:
    return "setting_" + name.replace(".", "_")


def _text(value: object, default_text: str | None) -> str:
    if value is None:
        return f"(unset: {default_text})" if default_text else "(unset)"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "(none)"
    return str(value)


def cmd_config(ns: argparse.Namespace) -> int:
    from caliban.core import config as calibanconfig
    from caliban.core import settings, userconfig

    environ = os.environ
    user = userconfig.load(environ)
    folder = Path.cwd()
    project = calibanconfig.load(folder)
    project_path = settings.project_path_for(str(folder))
    flags: dict[str, object] = {name: getattr(ns, _dest(name)) for name in _FLAGS.values()}
    if ns.nogpu:
        flags["default_mode"] = "cpu"
    resolved = settings.resolve(
        flags=flags,
        environ=environ,
        project=settings.project_values(project),
        project_path=project_path,
        user=user,
    )
    user_path = str(userconfig.path_for(environ))
    if ns.json:
        out = {
            "user_file": {"path": user_path, "exists": user.path is not None},
            "project_file": {"path": project_path, "exists": Path(project_path).is_file()},
            "settings": {
                name: {"value": r.value, "source": r.source, "where": r.where}
                for name, r in resolved.items()
            },
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return EXIT_OK
    lines = [
        f"user file:    {user_path}" + ("" if user.path else " (not found)"),
        f"project file: {project_path}" + ("" if Path(project_path).is_file() else " (not found)"),
        "",
    ]
    rows = [
        (name, _text(r.value, settings.BY_NAME[name].default_text), r.describe())
        for name, r in resolved.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, value, source in rows:
        lines.append(f"{name.ljust(widths[0])}  {value.ljust(widths[1])}  {source}")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK
