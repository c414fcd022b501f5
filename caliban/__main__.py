"""``python -m caliban``."""

from __future__ import annotations

import sys

from caliban.cli.main import main

sys.exit(main())
