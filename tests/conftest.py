"""Fixtures shared by the whole suite: the real Docker engine, the base image,
temporary caliban homes, throw-away projects, and cleanup by label.

Everything the tests create on the engine carries ``caliban.test=<run id>``
(through ``CALIBAN_LABELS`` / ``Session(labels=...)``) and is removed by that
label at the end, so the suite never touches anyone else's containers.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from caliban.adapters.docker import BUILT_WITH_PREFIX
from caliban.session import Session

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:10]
TEST_LABEL = "caliban.test"
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
IN_CI = bool(os.environ.get("CI"))
CALIBAN = str(Path(sys.executable).with_name("caliban"))


def docker_cli(*args: str, check: bool = True, timeout: float = 120) -> str:
    """The daemon's own client (a newer client on PATH may not speak its API)."""
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _engine_problem() -> str | None:
    try:
        result = subprocess.run(
            [DOCKER, "version", "--format", "{{.Server.APIVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip() or "docker version failed")


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip without an engine, except in CI where a skipped Docker test is a failure."""
    problem = _engine_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI needs a Docker engine (run scripts/ensure-docker.sh): {problem}")
        pytest.skip(f"no Docker engine ({problem}); `make docker` starts one")


@pytest.fixture(scope="session")
def base_image(docker_engine: None) -> str:
    given = os.environ.get("CALIBAN_BASE_IMAGE")
    if (
        given
        and subprocess.run(
            [DOCKER, "image", "inspect", given], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return given
    result = subprocess.run(
        [str(ROOT / "scripts" / "base-image.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot make a base image: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip()


@pytest.fixture(scope="session", autouse=True)
def _cleanup_engine() -> Iterator[None]:
    yield
    if _engine_problem():
        return
    label = f"label={TEST_LABEL}={RUN_ID}"
    ids = docker_cli("ps", "-aq", "--filter", label, check=False).split()
    if ids:
        docker_cli("rm", "-fv", *ids, check=False)
    # Images carry the run's label under caliban's built-with prefix (see
    # caliban.adapters.docker.image_labels); containers carry it as it is.
    built = f"label={BUILT_WITH_PREFIX}{TEST_LABEL}={RUN_ID}"
    images = docker_cli("images", "-q", "--filter", built, check=False).split()
    if images:
        docker_cli("rmi", "-f", *sorted(set(images)), check=False)


@pytest.fixture(scope="session")
def docker_registry(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1, one for the whole run: ``127.0.0.1:PORT``.

    Shared so the big base-image layers are uploaded once, not once per test.
    """
    env = {**os.environ, "CALIBAN_REGISTRY_DIR": str(tmp_path_factory.mktemp("registry"))}
    script = str(ROOT / "scripts" / "registry.sh")
    started = subprocess.run(
        [script, "start"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if started.returncode != 0:
        reason = f"cannot start docker-registry: {started.stderr.strip()[-1000:]}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60, check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "caliban-home"
    path.mkdir()
    return path


@pytest.fixture
def env(base_image: str, home: Path) -> dict[str, str]:
    """Environment for a caliban process (or Session) under test."""
    out = dict(os.environ)
    out.update(
        CALIBAN_HOME=str(home),
        CALIBAN_BASE_IMAGE=base_image,
        CALIBAN_LABELS=f"{TEST_LABEL}={RUN_ID}",
        COLUMNS="200",
        # The developer's own ~/.config/caliban/config.json must not change the tests.
        XDG_CONFIG_HOME=str(home.parent / "xdg-config"),
    )
    out.pop("CALIBAN_SIMULATED_GPUS", None)
    out.pop("CALIBAN_CONFIG", None)
    return out


@pytest.fixture
async def session(env: dict[str, str], home: Path) -> AsyncIterator[Session]:
    async with Session(home=home, environ=env) as s:
        yield s


JOB_PY = textwrap.dedent(
    '''
    """A test job: reports what it saw, sleeps, exits as told."""
    import argparse, json, os, sys, time

    p = argparse.ArgumentParser()
    p.add_argument("--sleep", type=float, default=0)
    p.add_argument("--exit", type=int, default=0)
    p.add_argument("--tag", default="")
    args, rest = p.parse_known_args()
    start = time.time()
    time.sleep(args.sleep)
    print(json.dumps({
        "tag": args.tag, "rest": rest, "start": start, "end": time.time(),
        "gpus": os.environ.get("CALIBAN_GPU_IDS"),
        "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "job": os.environ.get("CALIBAN_JOB_ID"), "uid": os.getuid(),
    }), flush=True)
    sys.exit(args.exit)
    '''
)


MakeProject = Callable[..., Path]


@pytest.fixture
def make_project(tmp_path: Path) -> MakeProject:
    """Write a small project folder; ``files`` maps relative paths to contents."""
    counter = iter(range(1000))

    def make(
        files: dict[str, str] | None = None, *, name: str | None = None, cpu: bool = True
    ) -> Path:
        folder = tmp_path / (name or f"proj{next(counter)}")
        folder.mkdir(parents=True)
        contents = {"job.py": JOB_PY, **(files or {})}
        if cpu and ".calibanconfig.json" not in contents:
            contents[".calibanconfig.json"] = json.dumps({"default_mode": "cpu"})
        for rel, text in contents.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return folder

    return make


def run_cli(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 300,
    stdin: str | None = None,
    script: str = "caliban",
) -> subprocess.CompletedProcess[str]:
    """Run the real console script (or ``script``, another one of the package), as a user would."""
    return subprocess.run(
        [str(Path(CALIBAN).with_name(script)), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


def job_reports(text: str) -> list[dict[str, object]]:
    """The JSON lines test jobs print, from captured output or log files."""
    out = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0:
            try:
                value = json.loads(line[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and "start" in value:
                out.append(value)
    return out


def labelled_containers(**labels: str) -> list[str]:
    filters: list[str] = []
    for k, v in labels.items():
        filters += ["--filter", f"label={k}={v}"]
    return docker_cli("ps", "-aq", *filters).split()


def store_id(home: Path) -> str:
    """The id of the store under ``home``, which labels every container it starts."""
    with sqlite3.connect(home / "caliban.db") as db:
        row = db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
    if row is None:  # a store being created: migrated, its id not written yet
        raise LookupError(f"{home / 'caliban.db'} has no store id yet")
    return str(row[0])


def store_containers(home: Path, **labels: str) -> list[str]:
    """The containers of the store under ``home`` (and ``labels``), running or not."""
    return labelled_containers(**{"caliban.store": store_id(home), **labels})


@pytest.fixture
def remove_leftovers(home: Path) -> Iterator[None]:
    """Whatever a failing test leaves behind: this store's containers, nobody else's."""
    yield
    if (home / "caliban.db").exists():
        ids = store_containers(home)
        if ids:
            docker_cli("rm", "-fv", *ids, check=False)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
