"""The parser class and the flag groups several subcommands share.

Only argparse and pure modules here: every subcommand's ``register`` runs for
``caliban --help``, so whatever this imports, help pays for.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from caliban.cli.args import positive_int
from caliban.core.experiment import DEFAULT_MAX_SWEEP
from caliban.errors import EXIT_USAGE

GLOBAL_FLAGS = frozenset({"-v", "--verbose", "-q", "--quiet"})


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` was most likely meant to be, if one is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


class _Formatter(argparse.HelpFormatter):
    """Wraps prose as argparse does, but keeps indented lines (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.split("\n\n")
        return "\n\n".join(
            "\n".join(indent + line for line in p.splitlines())
            if any(line.startswith(" ") for line in p.splitlines())
            else super(_Formatter, self)._fill_text(p, width, indent)
            for p in paragraphs
        )


class Parser(argparse.ArgumentParser):
    """caliban's parser: one-line errors, suggestions, and -v/-q on every (sub)command.

    Every parser made through ``add_subparsers(parser_class=Parser)`` gets the
    global flags itself, so ``caliban -v run`` and ``caliban run -v`` both work
    without each command declaring them; a command that still declares them
    gets the shared ones (so a module written before this keeps working).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Examples in epilogs keep their line breaks.
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        group = self.add_argument_group("output")
        # SUPPRESS: a subcommand's parser must not reset what was given before it.
        group.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="say more, show tracebacks",
        )
        group.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="only errors and the final summary",
        )

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if args and set(args) <= GLOBAL_FLAGS and self._option_string_actions.get(args[0]):
            return self._option_string_actions[args[0]]
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> Any:  # one line, exit 2, as for every bad input
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extra = super().parse_known_args(args, namespace)
        # The innermost (sub)command parses first: it is the one whose flags an
        # unknown one was meant to be.
        if not hasattr(ns, "_flag_parser"):
            ns._flag_parser = self
        return ns, extra

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # An unknown subcommand (or choice): name the likely one. argparse's own
        # suggest_on_error exists only from Python 3.14.
        choices = action.choices
        if choices is not None and isinstance(value, str) and value not in choices:
            near = suggest(value, [str(c) for c in choices])
            if near is not None:
                if isinstance(action, argparse._SubParsersAction):
                    what = "unknown command"
                else:
                    what = f"{argparse._get_action_name(action) or 'argument'}: unknown choice"
                raise argparse.ArgumentError(None, f"{what} {value!r}; did you mean {near!r}?")
        super()._check_value(action, value)

    def flags(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("--")]

    def unknown_flag(self, flag: str) -> str:
        """The message for a flag this command does not have."""
        name = flag.split("=", 1)[0]
        near = suggest(name, self.flags())
        hint = f"; did you mean {near}?" if near else ""
        return f"unknown flag {name}{hint}"


def split_script_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Everything after the first ``--`` belongs to the user's script."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def json_flag(p: argparse.ArgumentParser, what: str = "the summary") -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help=f"print {what} as JSON on stdout (progress goes to stderr), for scripts",
    )


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
