"""The ``expansion`` command: print the jobs an experiment config expands to.

Meant for shell pipelines such as
``expansion exp.json | my_filter.py | caliban cloud --experiment_config stdin``.
The default output is the list of jobs as one JSON line, exactly as the
original tool printed it; ``--pprint`` indents it and ``--print_flags`` prints
each job's flags on a line of its own, quoted so the line can be pasted into a
shell. Output is streamed, so a sweep of millions of jobs starts printing at
once and never sits in memory.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

from caliban.core import experiment
from caliban.errors import EXIT_USAGE, ExperimentConfigError


def _version() -> str:
    try:
        return metadata.version("caliban-async")
    except metadata.PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expansion",
        description="Expand an experiment config into the jobs it describes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # Two ways of printing: asking for both has no single meaning, so refuse it.
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--pprint", action="store_true", help="print the JSON list indented by two spaces"
    )
    form.add_argument(
        "--print_flags",
        action="store_true",
        help="print the command-line flags of each job, one job per line",
    )
    parser.add_argument(
        "experiment_config", help="path to an experiment config, or 'stdin' to read standard input"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status instead of exiting."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        config = experiment.load(args.experiment_config)
    except ExperimentConfigError as exc:
        print(f"expansion: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    out = sys.stdout
    try:
        if args.print_flags:
            for job in experiment.expand(config):
                out.write(experiment.flags_line(job) + "\n")
        else:
            indent = 2 if args.pprint else None
            for chunk in experiment.iter_json(experiment.expand(config), indent=indent):
                out.write(chunk)
            out.write("\n")
        out.flush()
    except BrokenPipeError:
        # The reader went away (`expansion big.json | head`): stop quietly and
        # keep the interpreter from complaining again when it flushes at exit.
        _silence_stdout()
        return 1
    return 0


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
