"""Shared pieces of the ``caliban cluster`` tests: requests, CLI runs and waiting helpers
(the fake cluster fixtures are in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio

from caliban.options import ClusterJobRequest, ClusterOptions, ProjectOptions
from tests.conftest import CALIBAN
from tests.fakes.k8s import FakeKubernetes

IMAGE = "registry.example/team/caliban-app@sha256:" + "c" * 64
JOB_LABEL = "caliban.dev/job"


def request(folder: Path, kubeconfig: Path, **kw: Any) -> ClusterJobRequest:
    base: dict[str, Any] = {
        "project": ProjectOptions(folder=folder, entry="job.py", use_gpu=False),
        "cluster": ClusterOptions(kubeconfig=str(kubeconfig)),
        "image_tag": IMAGE,
    }
    base.update(kw)
    return ClusterJobRequest(**base)


def names_of(kube: FakeKubernetes, ns: str = "default") -> list[str]:
    return sorted(j["metadata"]["name"] for j in kube.jobs(ns))


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    """Poll a condition the fake reaches on its own (foreground deletion, a child's progress)."""
    # Polling on purpose: the fakes change state from their own handlers and timers,
    # with no event to wait on.
    with anyio.fail_after(timeout):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KUBECONFIG", "GOOGLE_APPLICATION_CREDENTIALS", "CALIBAN_LABELS")
    }
    env.update(
        CALIBAN_HOME=str(tmp_path / "home"),
        HOME=str(tmp_path),
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


async def caliban(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120
) -> tuple[int, str, str]:
    """Run the real console script while the in-process fakes keep serving."""
    with anyio.fail_after(timeout):
        result = await anyio.run_process([CALIBAN, *args], cwd=cwd, env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


# `caliban cluster job submit` of a sweep file against a kubeconfig, as a user types it.
def submit_args(
    kubeconfig: Path, config: Path, *extra: str, script: tuple[str, ...] = ()
) -> list[str]:
    return [
        "cluster",
        "job",
        "submit",
        "--kubeconfig",
        str(kubeconfig),
        "--image_tag",
        IMAGE,
        "--experiment_config",
        str(config),
        *extra,
        "job.py",
        *(("--", *script) if script else ()),
    ]
