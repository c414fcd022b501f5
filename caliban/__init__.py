"""Caliban: package research code in a Docker image and run sweeps of it.

The library API mirrors the command line::

    import anyio, caliban

    async def main() -> None:
        async with caliban.Session() as session:
            result = await session.run(caliban.RunRequest(
                project=caliban.ProjectOptions(entry="train.py", use_gpu=False),
                experiments={"learning_rate": [0.01, 0.1]},
            ))
            print(result.counts)

    anyio.run(main)

Names are imported lazily so that importing caliban (and ``caliban --help``)
stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from caliban.version import __version__ as __version__

_EXPORTS = {
    "Session": "caliban.session",
    "RunResult": "caliban.session",
    "ProjectOptions": "caliban.options",
    "RunRequest": "caliban.options",
    "ShellRequest": "caliban.options",
    "NotebookRequest": "caliban.options",
    "CloudRequest": "caliban.options",
    "SlurmRequest": "caliban.options",
    "ClusterJobRequest": "caliban.options",
    "ClusterOptions": "caliban.options",
    "ClusterCreateRequest": "caliban.options",
    "JobRecord": "caliban.spec",
    "JobState": "caliban.spec",
    "JobMode": "caliban.spec",
    "Platform": "caliban.spec",
    "FailedOutput": "caliban.sweep.tails",
    # A job's metrics, as `caliban results` reads them: caliban.report(accuracy=0.97).
    "report": "caliban.core.metrics",
    "Result": "caliban.core.results",
    # The whole error tree, so `except caliban.QuotaError` needs no deeper import.
    "CalibanError": "caliban.errors",
    "ConfigError": "caliban.errors",
    "ExperimentConfigError": "caliban.errors",
    "CalibanConfigError": "caliban.errors",
    "ValidationError": "caliban.errors",
    "MissingExtra": "caliban.errors",
    "EngineUnavailable": "caliban.errors",
    "BuildError": "caliban.errors",
    "BackendError": "caliban.errors",
    "AuthError": "caliban.errors",
    "QuotaError": "caliban.errors",
    "PushError": "caliban.errors",
    "OutcomeUnknown": "caliban.errors",
    "NotFound": "caliban.errors",
    "StoreError": "caliban.errors",
    "StoreUnwritable": "caliban.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'caliban' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
