"""The parser class and the flag groups several subcommands share.

Only argparse and pure modules here: every subcommand's ``register`` runs for
``caliban --help``, so whatever this imports, help pays for.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from caliban.cli.args import positive_int
from caliban.core.experiment import DEFAULT_MAX_SWEEP
from caliban.errors import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as for every bad input
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def split_script_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Everything after the first ``--`` belongs to the user's script."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def base_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nogpu",
        dest="use_gpu",
        action="store_false",
        default=None,
        help="build and run in CPU mode (default: GPU mode, or default_mode of "
        ".calibanconfig.json)",
    )
    p.add_argument(
        "--cloud_key",
        metavar="KEY_FILE",
        help="service account key file (default: $GOOGLE_APPLICATION_CREDENTIALS)",
    )
    p.add_argument(
        "--extras",
        action="append",
        default=[],
        metavar="EXTRA",
        help="setup.py extra to install; repeatable",
    )
    p.add_argument(
        "--no_cache", action="store_true", help="rebuild the image even if an identical one exists"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="say more, show tracebacks")


def building_flags(p: argparse.ArgumentParser) -> None:
    base_flags(p)
    p.add_argument(
        "-d",
        "--dir",
        action="append",
        default=[],
        dest="dirs",
        metavar="DIR",
        help="extra folder of the project to copy into the image; repeatable",
    )
    p.add_argument("module", help="script (train.py), module (trainer.train) or other file to run")


def executing_flags(p: argparse.ArgumentParser) -> None:
    building_flags(p)
    p.add_argument(
        "--experiment_config",
        metavar="FILE",
        help="experiment config (JSON) to expand into jobs, or 'stdin'",
    )
    p.add_argument(
        "--dry_run",
        action="store_true",
        help="show the jobs that would run; build, run and record nothing",
    )
    p.add_argument(
        "--max_sweep",
        type=positive_int,
        default=DEFAULT_MAX_SWEEP,
        metavar="N",
        help=f"refuse an experiment config of more than N jobs (default {DEFAULT_MAX_SWEEP})",
    )
