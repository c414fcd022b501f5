"""``caliban completion SHELL``: a static tab-completion script made by shtab.

shtab reads the argparse tree once and writes plain shell code, so completing
costs the shell nothing at run time (no Python started per <TAB>, unlike
argcomplete).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from caliban.errors import EXIT_OK, ValidationError

SHELLS = ("bash", "zsh", "fish")


def register(sub: argparse._SubParsersAction[Any], root: argparse.ArgumentParser) -> None:
    """``root``: the whole command tree, which the script describes (this module
    may not import :mod:`caliban.cli.main` to build it)."""
    p = sub.add_parser("completion", help="print a tab-completion script for bash, zsh or fish")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(handler=lambda ns: cmd_completion(ns, root))


def cmd_completion(ns: argparse.Namespace, root: argparse.ArgumentParser) -> int:
    try:
        import shtab
    except ImportError as exc:  # a dependency; missing only in a broken install
        raise ValidationError("`caliban completion` needs shtab: pip install shtab") from exc
    sys.stdout.write(shtab.complete(root, shell=ns.shell))
    return EXIT_OK
