"""Time to a usable `caliban shell` prompt with the image cached.

From launching `caliban shell --nogpu --bare` in a pseudo-terminal (a copy of
tutorials/basic) until the shell has evaluated a line we typed, median of N
runs, against `docker run --rm -it <the same image> bash` to the same marker,
measured in the same run with the daemon's own client. Both sides exit the
shell after each run, and caliban's time includes finding the image by
content hash, creating, attaching, starting and resizing the container.
Target: under 1.5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import pexpect
from _common import CALIBAN, DOCKER, LABEL, ROOT, caliban, report, workspace

MARKER = "echo READY$((20+22))"  # the typed line does not match READY42; its output does


def to_prompt(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(cwd), env=env, encoding="utf-8", timeout=120)
    child.sendline(MARKER)
    child.expect("READY42")
    elapsed = time.perf_counter() - start
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    if child.exitstatus != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {child.exitstatus}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--runs", type=int, default=5)
    args = parser.parse_args()
    with workspace() as (scratch, env):
        project = scratch.parent / "basic"
        shutil.copytree(ROOT / "tutorials" / "basic", project)
        env = {**env, "TERM": "xterm", "SHELL": "/bin/bash"}
        # Warm-up, untimed: builds the image once and tells us its tag.
        caliban(["build", "train.py"], project, env)
        child = pexpect.spawn(
            CALIBAN, ["shell", "--nogpu", "--bare"], cwd=str(project), env=env, encoding="utf-8",
            timeout=600,
        )  # fmt: skip
        child.expect(r"bash shell in (\S+) as")
        image = child.match.group(1)
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
        child.close()

        shell_cmd = [CALIBAN, "shell", "--nogpu", "--bare"]
        docker_cmd = [DOCKER, "run", "--rm", "-it", "--label", LABEL, image, "bash"]
        ours: list[float] = []
        base: list[float] = []
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            ours.append(to_prompt(shell_cmd, project, env))
            base.append(to_prompt(docker_cmd, project, env))
    value, baseline = statistics.median(ours), statistics.median(base)
    report(
        "shell_startup",
        {
            "unit": "seconds to a usable prompt (median)",
            "runs": args.runs,
            "value": round(value, 3),
            "baseline": round(baseline, 3),
            "ratio": round(value / baseline, 2),
            "target": 1.5,
            "caliban_runs": [round(t, 3) for t in ours],
            "docker_run_runs": [round(t, 3) for t in base],
            "baseline_command": "docker run --rm -it IMAGE bash",
            "image": image,
        },
    )


if __name__ == "__main__":
    main()
