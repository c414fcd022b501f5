"""Progress of the real CLI when its output is piped: plain lines at a steady interval
with the right counts, and a build's log only when it fails or with -v."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import RUN_ID, MakeProject, run_cli

pytestmark = [pytest.mark.docker]

_SWEEP_LINE = re.compile(r"^(\d+)/(\d+) done, (\d+) running, (\d+) failed$")


def _fast(env: dict[str, str]) -> dict[str, str]:
    # A short interval keeps the test quick; what is checked is the content, not the timing.
    return {**env, "CALIBAN_PROGRESS_INTERVAL": "0.05"}


@pytest.mark.parametrize("prewarm", ["0", "1"])
def test_a_piped_sweep_prints_plain_progress_lines_with_its_counts(
    make_project: MakeProject, env: dict[str, str], prewarm: str
) -> None:
    sweep = {"sleep": [0.6], "exit": [0, 0, 3], "tag": ["a"]}
    folder = make_project({"sweep.json": json.dumps(sweep)})
    args = ["run", "--nogpu", "--max_parallel", "2", "--experiment_config", "sweep.json", "job.py"]
    result = run_cli(args, cwd=folder, env={**_fast(env), "CALIBAN_PREWARM": prewarm})
    assert result.returncode == 1, result.stderr  # one job exits 3
    lines = [m for line in result.stderr.splitlines() if (m := _SWEEP_LINE.match(line))]
    assert len(lines) >= 2, result.stderr
    counts = [tuple(int(g) for g in m.groups()) for m in lines]
    # A pre-warmed slot starts its next job as soon as the last one's process is
    # gone, and records that one's end after its output is drained: for that moment
    # a slot counts two jobs running (docs/local-gpus-and-cpus.md). Plain starts never.
    most = 2 if prewarm == "0" else 4
    for done, total, running, failed in counts:
        assert total == 3 and running <= most and done + running <= 3 and failed <= done
    assert [c[0] for c in counts] == sorted(c[0] for c in counts)
    assert counts[-1] == (3, 3, 0, 1)
    assert "\x1b[" not in result.stderr + result.stdout


def test_a_piped_build_hides_its_log_unless_verbose(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    # Content of this run only: an image another run built would skip the build.
    folder = make_project(
        {"setup.py": "from setuptools import setup\nsetup(name='p')\n", "marker.txt": RUN_ID}
    )
    quiet = run_cli(["build", "job.py"], cwd=folder, env=_fast(env))
    assert quiet.returncode == 0, quiet.stderr
    out = quiet.stdout + quiet.stderr
    assert "Step 1/" not in out and "---> " not in out
    assert re.search(r"built \S+ in [\d.]+s, (\d+) steps, \d+ cached", out), out
    assert "\x1b[" not in out

    (folder / "job.py").write_text((folder / "job.py").read_text() + "# edited\n")
    loud = run_cli(["build", "-v", "job.py"], cwd=folder, env=_fast(env))
    assert loud.returncode == 0, loud.stderr
    assert "Step 1/" in loud.stdout and "Using cache" in loud.stdout


def test_a_failed_build_prints_its_whole_log(
    make_project: MakeProject, env: dict[str, str], tmp_path: Path
) -> None:
    folder = make_project({"setup.py": "raise SystemExit('setup exploded')\n"})
    result = run_cli(["build", "job.py"], cwd=folder, env=_fast(env))
    assert result.returncode == 1
    assert "Step 1/" in result.stdout and "setup exploded" in result.stdout
    assert "image build failed at step" in result.stderr
