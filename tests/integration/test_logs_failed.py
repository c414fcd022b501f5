"""`caliban logs --xgroup X --failed --tail N` on real Docker: a sweep where one job raises
ValueError and one exits 137, through the CLI as a user runs it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import MakeProject, run_cli

pytestmark = [pytest.mark.docker]

JOB = """\
import argparse
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--mode")
mode = parser.parse_args().mode
for step in range(30):
    print(f"{mode} step {step}", flush=True)
if mode == "value":
    # stdout and the traceback's stderr are two pipes: the engine may interleave
    # lines written within the same instant, so let stdout's reach it first.
    time.sleep(0.5)
    def train(lr):
        raise ValueError(f"learning rate {lr} is not a number")
    train("abc")
if mode == "memory":
    print("allocating 64 GiB", flush=True)
    sys.exit(137)
print("done")
"""


def test_failed_logs_show_the_end_of_each_failed_job_with_its_cause(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project({"job.py": JOB})
    (folder / "sweep.json").write_text(json.dumps({"mode": ["ok", "value", "memory", "ok"]}))
    ran = run_cli(
        ["run", "--experiment_config", "sweep.json", "--xgroup", "tails", "job.py"],
        cwd=folder,
        env=env,
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr  # two jobs failed

    done = run_cli(["logs", "--xgroup", "tails", "--failed", "--tail", "3"], cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.strip().split("\n\n")
    assert len(blocks) == 2, done.stdout
    value, memory = (block.splitlines() for block in blocks)
    assert value[0].startswith("==> 2/4 ")
    assert value[0].endswith("exit code 1  likely cause: ValueError")
    assert len(value) == 4
    assert value[1].startswith('  File "') and value[1].endswith(", in train")
    assert value[2:] == [
        '    raise ValueError(f"learning rate {lr} is not a number")',
        "ValueError: learning rate abc is not a number",
    ]
    assert memory[0].startswith("==> 3/4 ")
    assert memory[0].endswith(
        "exit code 137  likely cause: killed for memory (exit 137 / OOMKilled)"
    )
    assert memory[1:] == ["memory step 28", "memory step 29", "allocating 64 GiB"]

    # No failure, nothing to show.
    fine = make_project({"job.py": JOB})
    (fine / "sweep.json").write_text(json.dumps({"mode": ["ok"]}))
    assert (
        run_cli(
            ["run", "--experiment_config", "sweep.json", "--xgroup", "fine", "job.py"],
            cwd=fine,
            env=env,
        ).returncode
        == 0
    )
    none = run_cli(["logs", "--xgroup", "fine", "--failed"], cwd=fine, env=env)
    assert (none.returncode, none.stdout.strip()) == (0, "no failed jobs in fine")
