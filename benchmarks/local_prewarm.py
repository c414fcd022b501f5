"""Pre-warmed local slots against plain starts, raw `docker run` loops and the ideal.

16 jobs of 2 s on 4 slots, on the bridge and the host network, three rounds in
one run (the order of the contenders rotates each round, so a load change
hits each of them alike); min/median/max of each:
- caliban with plain starts (CALIBAN_PREWARM=0);
- caliban with pre-warmed slots (CALIBAN_PREWARM=1);
- 4 parallel shell loops of `docker run --rm --init`, 4 jobs each;
- the ideal, 16 / 4 x 2 s.
Target (issue 15): pre-warmed <= 0.85x the raw loops; <= 1.25x ideal when idle.
The machine's load average (before and after) is part of the report.

As in build_nochange.py, caliban may write its bytecode even if the environment
says not to (PYTHONDONTWRITEBYTECODE): an installed caliban has it compiled,
and compiling ~90 of its modules anew in every sweep would add ~0.15 s of CPU
that no user pays. One untimed sweep of one job compiles what a sweep imports.

Usage: python benchmarks/local_prewarm.py [--rounds N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path

from _common import CALIBAN, DOCKER, LABEL, caliban, report, timed, workspace

JOBS = 16
SLOTS = 4
SLEEP = 2.0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    load_before = _load()
    with workspace() as (project, env):
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        config = project / "sweep.json"
        config.write_text(json.dumps({"i": list(range(JOBS))}))
        caliban(["build", "job.py"], project, env)  # build once, untimed
        warm = project.parent / "warm.json"  # outside the project: the image stays as built
        warm.write_text(json.dumps({"i": [0]}))
        caliban(["run", "--experiment_config", str(warm), "job.py"], project, env)
        tag = subprocess.run(
            [CALIBAN, "build", "job.py"], cwd=project, env=env,
            capture_output=True, text=True, check=True,
        ).stdout.split()[-1]  # fmt: skip
        helper = subprocess.run(
            [str(Path(__file__).resolve().parent.parent / "scripts" / "gate-helper.sh")],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        if not helper:
            raise SystemExit("no gate helper here: pre-warmed slots would be plain starts")

        def sweep(network: str, prewarm: str) -> None:
            args = ["run", "--max_parallel", str(SLOTS), "--experiment_config", str(config)]
            if network == "host":
                args.append("--docker_run_args=--network host")
            args += ["job.py", "--", "--sleep", str(SLEEP)]
            caliban(args, project, {**env, "CALIBAN_PREWARM": prewarm})

        def raw(network: str) -> None:
            loop = (
                f"(for i in 1 2 3 4; do {DOCKER} run --rm --init --network {network} "
                f"--label {LABEL} {tag} --sleep {SLEEP} >/dev/null; done)"
            )
            per_slot = JOBS // SLOTS
            assert per_slot == 4
            subprocess.run(["bash", "-c", " & ".join([loop] * SLOTS) + " & wait"], check=True)

        contenders = {
            "caliban_plain": lambda n: sweep(n, "0"),
            "caliban_prewarm": lambda n: sweep(n, "1"),
            "raw_docker_4_loops": raw,
        }
        figures: dict[str, object] = {}
        names = list(contenders)
        for network in ("bridge", "host"):
            times: dict[str, list[float]] = {name: [] for name in names}
            for r in range(opts.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    times[name].append(timed(lambda: contenders[name](network)))  # noqa: B023
            ideal = JOBS / SLOTS * SLEEP
            med = {name: statistics.median(t) for name, t in times.items()}
            figures[network] = {
                **{f"{name}_s": _spread(t) for name, t in times.items()},
                "ideal_s": ideal,
                "prewarm_vs_raw_docker": round(
                    med["caliban_prewarm"] / med["raw_docker_4_loops"], 3
                ),
                "plain_vs_raw_docker": round(med["caliban_plain"] / med["raw_docker_4_loops"], 3),
                "prewarm_vs_plain": round(med["caliban_prewarm"] / med["caliban_plain"], 3),
                "prewarm_vs_ideal": round(med["caliban_prewarm"] / ideal, 3),
                "plain_vs_ideal": round(med["caliban_plain"] / ideal, 3),
                "runs": {name: [round(x, 2) for x in t] for name, t in times.items()},
            }
    result = {
        "benchmark": "local_prewarm",
        "jobs": JOBS,
        "slots": SLOTS,
        "sleep_s": SLEEP,
        "rounds": opts.rounds,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": _load(),
        **figures,
        "targets": {"prewarm_vs_raw_docker": 0.85, "prewarm_vs_ideal_idle": 1.25},
    }
    report("local_prewarm", {k: v for k, v in result.items() if k != "benchmark"})
    if opts.out is not None:
        opts.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
