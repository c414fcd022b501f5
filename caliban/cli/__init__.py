"""The `caliban` command line: flags to requests, events to text, errors to exit codes."""

from caliban.cli.main import main

__all__ = ["main"]
