"""Shared helpers for the benchmark scripts (not a benchmark itself)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALIBAN = str(Path(sys.executable).with_name("caliban"))
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
RUN_ID = uuid.uuid4().hex[:8]
LABEL = f"caliban.bench={RUN_ID}"

SLEEP_JOB = """\
import sys, time
time.sleep(float(sys.argv[sys.argv.index("--sleep") + 1]) if "--sleep" in sys.argv else 0)
"""


def base_image() -> str:
    given = os.environ.get("CALIBAN_BASE_IMAGE")
    if given:
        return given
    out = subprocess.run(
        [str(ROOT / "scripts" / "base-image.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@contextmanager
def workspace() -> Iterator[tuple[Path, dict[str, str]]]:
    """A project folder with one sleeping job, and a private caliban home."""
    tmp = Path(tempfile.mkdtemp(prefix="caliban-bench-"))
    project = tmp / "bench"
    project.mkdir()
    (project / "job.py").write_text(SLEEP_JOB)
    (project / ".calibanconfig.json").write_text('{"default_mode": "cpu"}')
    env = dict(os.environ)
    env.update(
        CALIBAN_HOME=str(tmp / "home"), CALIBAN_BASE_IMAGE=base_image(), CALIBAN_LABELS=LABEL
    )
    try:
        yield project, env
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def cleanup() -> None:
    ids = subprocess.run(
        [DOCKER, "ps", "-aq", "--filter", f"label={LABEL}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if ids:
        subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True, check=False)
    images = subprocess.run(
        # Built images carry the run's label under caliban's built-with prefix.
        [DOCKER, "images", "-q", "--filter", f"label=caliban.built_with.{LABEL}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if images:
        subprocess.run([DOCKER, "rmi", "-f", *set(images)], capture_output=True, check=False)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def caliban(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [CALIBAN, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"caliban {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def median_time(fn: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeat))


def report(name: str, figures: dict[str, object]) -> None:
    print(json.dumps({"benchmark": name, **figures}, indent=2))
