"""Bad input: one clear line, a non-zero exit, and nothing written to the store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import MakeProject, run_cli


@pytest.fixture
def plain_env(tmp_path: Path) -> dict[str, str]:
    """No Docker needed: every case below must fail before touching it."""
    env = dict(os.environ)
    env.update(CALIBAN_HOME=str(tmp_path / "home"), COLUMNS="200")
    env.pop("CALIBAN_SIMULATED_GPUS", None)
    return env


CASES = [
    (["run", "--nogpu", "missing.py"], {}, "neither a file nor a Python module"),
    (
        ["run", "--nogpu", "--experiment_config", "bad.json", "job.py"],
        {"bad.json": '{"[a,,b]": [1, 2]}'},
        "[a,,b]",
    ),
    (
        ["run", "--nogpu", "--experiment_config", "bad.json", "job.py"],
        {"bad.json": '{"epochs": [1, 2], "lr": {"nested": 1}}'},
        "lr",
    ),
    (
        ["run", "--nogpu", "--experiment_config", "bad.json", "job.py"],
        {"bad.json": "{not json"},
        "bad.json",
    ),
    (["run", "--nogpu", "--experiment_config", "nope.json", "job.py"], {}, "nope.json"),
    (["run", "--nogpu", "--gpu_ids", "0,1", "job.py"], {}, "need GPU mode"),
    (["run", "--nogpu", "--gpus_per_job", "2", "job.py"], {}, "need GPU mode"),
    (["run", "--gpu_ids", "0", "--gpus_per_job", "2", "job.py"], {}, "more than the 1 GPU"),
    (["run", "--gpu_ids", "0,x", "job.py"], {}, "not a GPU index"),
    (["run", "--max_parallel", "0", "job.py"], {}, "must be at least 1"),
    (["run", "--nogpu", "job.py"], {".calibanconfig.json": '{"colour": "blue"}'}, "colour"),
    (["run", "--nogpu", "job.py"], {".calibanconfig.json": "{oops"}, ".calibanconfig.json"),
    (["run", "--nogpu", "--docker_run_args=--frobnicate", "job.py"], {}, "--frobnicate"),
    (["run", "--nogpu", "job.py", "--epochs", "2"], {}, "after `--`"),
    (["run", "--nogpu", "-d", "nodir", "job.py"], {}, "nodir"),
    (["status", "--xgroup", "never-made"], {}, "never-made"),
    (["frobnicate"], {}, "invalid choice"),
    # --force skips the catalog, not the topology Vertex needs for a TPU VM.
    (
        ["cloud", "--project_id", "my-project", "--force", "--tpu_spec", "16xV6E", "job.py"],
        {},
        "no known TPU topology for 16xV6E",
    ),
]


@pytest.mark.parametrize(("args", "files", "needle"), CASES)
def test_bad_input_is_refused_before_anything_happens(
    make_project: MakeProject,
    plain_env: dict[str, str],
    args: list[str],
    files: dict[str, str],
    needle: str,
) -> None:
    cfg = (
        {".calibanconfig.json": files.pop(".calibanconfig.json")}
        if (".calibanconfig.json" in files)
        else {}
    )
    folder = make_project({**files, **cfg}, cpu=not cfg)
    result = run_cli(args, cwd=folder, env=plain_env, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    # One line, plus at most a hint line (and argparse's usage line).
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len([line for line in lines if not line.startswith("usage:")]) <= 2, lines
    if args[0] in ("run", "cloud"):
        assert not (Path(plain_env["CALIBAN_HOME"]) / "caliban.db").exists()


def test_no_docker_engine_says_how_to_start_one(
    make_project: MakeProject, plain_env: dict[str, str]
) -> None:
    env = {**plain_env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = run_cli(["run", "--nogpu", "job.py"], cwd=make_project(), env=env, timeout=60)
    assert result.returncode == 1
    assert "cannot reach a Docker engine" in result.stderr and "start one" in result.stderr
    assert not (Path(plain_env["CALIBAN_HOME"]) / "caliban.db").exists()


def test_dry_run_touches_neither_docker_nor_the_store(
    make_project: MakeProject, plain_env: dict[str, str]
) -> None:
    env = {**plain_env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    folder = make_project({"exp.json": '{"lr": [0.1, 0.2], "big": true}'})
    result = run_cli(
        [
            "run",
            "--nogpu",
            "--dry_run",
            "--experiment_config",
            "exp.json",
            "job.py",
            "--",
            "--seed",
            "1",
        ],
        cwd=folder,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # One whole line per job on stdout, however long; the narration is on stderr.
    first, second = result.stdout.splitlines()
    assert first.startswith("job 1/2: docker run ") and first.endswith("--seed 1 --lr 0.1 --big")
    assert second.startswith("job 2/2: docker run ") and second.endswith("--lr 0.2 --big")
    assert "dry run: 2 job(s)" in result.stderr
    assert not (Path(plain_env["CALIBAN_HOME"]) / "caliban.db").exists()


def test_help_is_fast_and_lists_every_command(plain_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["--help"], cwd=tmp_path, env=plain_env, timeout=30)
    assert result.returncode == 0
    for command in ("build", "run", "status", "stop", "resubmit", "logs"):
        assert command in result.stdout
    # Nothing heavy is imported just to print help.
    probe = (
        "import sys\nfrom caliban.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'aiohttp', 'aiodocker', 'rich', 'aiosqlite', 'kubernetes_asyncio', 'anyio'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith("[]")
