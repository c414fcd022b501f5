"""The tutorials run as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_basic_tutorial_sweep(env: dict[str, str], home: Path) -> None:
    folder = ROOT / "tutorials" / "basic"
    result = run_cli(
        ["run", "--experiment_config", "experiment.json", "--xgroup", "tut", "train.py"],
        cwd=folder,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("test accuracy") == 6
    status = run_cli(["status", "--xgroup", "tut"], cwd=folder, env=env)
    assert status.stdout.count("SUCCEEDED") == 6
    # The answer to the sweep's question: the best learning rate, and a picture.
    every = json.loads(run_cli(["results", "--json"], cwd=folder, env=env).stdout)
    assert len(every) == 6 and all(0 < r["accuracy"] <= 1 for r in every)
    best = run_cli(["results", "--best", "accuracy", "--json"], cwd=folder, env=env)
    (row,) = json.loads(best.stdout)
    assert row["accuracy"] == max(r["accuracy"] for r in every)
    assert row["learning_rate"] in (0.001, 0.01, 0.1)
    drawn = run_cli(["results", "--plot", "learning_rate:accuracy"], cwd=folder, env=env)
    assert drawn.returncode == 0, drawn.stderr
    assert "accuracy vs learning_rate" in drawn.stdout
    assert "epochs=5" in drawn.stdout and "epochs=20" in drawn.stdout


def test_library_tutorial(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tutorials" / "library" / "sweep.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if "accuracy=" in line]
    assert len(rows) == 3 and all("SUCCEEDED" in row for row in rows)
    assert all(float(row.rsplit("=", 1)[1]) > 0 for row in rows)
