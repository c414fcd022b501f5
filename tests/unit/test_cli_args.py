"""The flag value types every subcommand shares."""

from __future__ import annotations

import argparse

import pytest

from caliban.cli import args as cli_args


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (cli_args.positive_int, "3", 3),
        (cli_args.non_negative_int, "0", 0),
        (cli_args.positive_float, "0.5", 0.5),
        (cli_args.key_value, " team =vision=x", ("team", "vision=x")),
        (cli_args.port, "8888", 8888),
    ],
)
def test_good_values(parse: object, text: str, value: object) -> None:
    assert parse(text) == value  # type: ignore[operator]


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (cli_args.positive_int, "0", "at least 1"),
        (cli_args.positive_int, "1.5", "not a whole number"),
        (cli_args.non_negative_int, "-1", "0 or more"),
        (cli_args.positive_float, "0", "must be positive"),
        (cli_args.positive_float, "fast", "not a number"),
        (cli_args.key_value, "novalue", "not KEY=VALUE"),
        (cli_args.key_value, "=v", "not KEY=VALUE"),
        (cli_args.port, "70000", "not a port"),
        (cli_args.port, "http", "not a port number"),
    ],
)
def test_bad_values_are_argparse_errors(parse: object, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)  # type: ignore[operator]
