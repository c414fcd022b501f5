"""The pure modules must not pull in any I/O library."""

from __future__ import annotations

import json
import subprocess
import sys

PURE = [
    "caliban.spec",
    "caliban.errors",
    "caliban.core.experiment",
    "caliban.core.causes",
    "caliban.cli.expansion",
    "caliban.core.jobmode",
    "caliban.core.labels",
    "caliban.core.names",
    "caliban.core.accelerators",
    "caliban.core.config",
    "caliban.platforms.kubernetes.spec",
    "caliban.platforms.kubernetes.versions",
    "caliban.platforms.kubernetes.gkespec",
    "caliban.platforms.vertex.spec",
    "caliban.platforms.vertex.scheduling",
    "caliban.platforms.vertex.ladder",
    "caliban.platforms.slurm.spec",
    "caliban.platforms.slurm.limits",
    "caliban.platforms.slurm.states",
    "caliban.events",
    "caliban.options",
    "caliban.core.dockerfile",
    "caliban.core.dockerignore",
    "caliban.core.dockerargs",
    "caliban.core.docker_values",
    "caliban.core.runflags",
    "caliban.core.createjson",
    "caliban.core.baseimage",
    "caliban.core.project",
    "caliban.cli.args",
    "caliban.core.secretfiles",
    "caliban.core.secretenv",
    "caliban.core.output",
    "caliban.core.topology",
    "caliban.core.settings",
    "caliban.core.userconfig",
    "caliban.core.metrics",
    "caliban.core.results",
]
FORBIDDEN = ["aiohttp", "aiodocker", "kubernetes_asyncio", "aiosqlite", "rich", "anyio"]


def test_pure_modules_import_no_io_library() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {PURE!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []
