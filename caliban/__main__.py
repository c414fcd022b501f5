"""``python -m caliban``."""

from __future__ import annotations

from caliban.cli.main import run

run()
