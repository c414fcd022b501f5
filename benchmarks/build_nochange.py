"""A no-change `caliban build` against one `docker image inspect` of the same image.

The project is built once (untimed); then, interleaved so that the machine's
load hits both alike, N runs of `caliban build job.py` (which hashes the
folder and finds the image by its content-hash tag: one inspect over the
engine's socket, no aiodocker, no rich when piped) and N runs of
`docker image inspect TAG` with the daemon's own client. Reports min, median
and max of each and the ratio of medians, from the same run, with the load
average. Target: the no-change build in 0.4 s or less.

Python may write its bytecode here even if the environment says not to
(PYTHONDONTWRITEBYTECODE): an installed caliban has it compiled, and compiling
caliban's modules anew on every run would add ~0.2 s that no user pays.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess

from _common import CALIBAN, DOCKER, report, timed, workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--runs", type=int, default=3)
    args = parser.parse_args()
    with workspace() as (project, env):
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        first = subprocess.run(
            [CALIBAN, "build", "job.py"], cwd=project, env=env, capture_output=True, text=True
        )
        if first.returncode != 0:
            raise SystemExit(f"caliban build failed:\n{first.stdout}\n{first.stderr}")
        tag = first.stdout.strip().splitlines()[-1]

        def build() -> None:
            out = subprocess.run(
                [CALIBAN, "build", "job.py"], cwd=project, env=env, capture_output=True, text=True
            )
            if out.returncode != 0 or "build skipped" not in out.stdout:
                raise SystemExit(f"the no-change build did build:\n{out.stdout}\n{out.stderr}")

        def inspect() -> None:
            subprocess.run([DOCKER, "image", "inspect", tag], capture_output=True, check=True)

        ours: list[float] = []
        base: list[float] = []
        for _ in range(args.runs):
            ours.append(timed(build))
            base.append(timed(inspect))
    value, baseline = statistics.median(ours), statistics.median(base)
    report(
        "build_nochange",
        {
            "unit": "seconds (median)",
            "runs": args.runs,
            "value": round(value, 3),
            "baseline": round(baseline, 3),
            "ratio": round(value / baseline, 2),
            "target": 0.4,
            "caliban_min_median_max": [round(f(ours), 3) for f in (min, statistics.median, max)],
            "inspect_min_median_max": [round(f(base), 3) for f in (min, statistics.median, max)],
            "baseline_command": "docker image inspect TAG",
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    )


if __name__ == "__main__":
    main()
