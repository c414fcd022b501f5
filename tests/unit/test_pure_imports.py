"""The pure modules must not pull in any I/O library."""

from __future__ import annotations

import json
import subprocess
import sys

PURE = [
    "caliban.spec",
    "caliban.errors",
    "caliban.experiment",
    "caliban.expansion",
    "caliban.jobmode",
    "caliban.labels",
    "caliban.names",
    "caliban.accelerators",
    "caliban.config",
    "caliban.k8sspec",
    "caliban.k8sversions",
    "caliban.gkespec",
    "caliban.vertexspec",
    "caliban.events",
    "caliban.options",
    "caliban.dockerfile",
    "caliban.dockerignore",
    "caliban.dockerargs",
    "caliban.docker_values",
    "caliban.runflags",
    "caliban.createjson",
    "caliban.baseimage",
    "caliban.project",
    "caliban.cli_args",
    "caliban.secretfiles",
    "caliban.secretenv",
    "caliban.output",
    "caliban.topology",
    "caliban.settings",
    "caliban.userconfig",
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
