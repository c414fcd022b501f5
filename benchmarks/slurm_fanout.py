"""Benchmark: a sweep on the local Slurm cluster as one array job vs one sbatch per job.

On the one-node cluster of scripts/slurm-cluster.sh (8 advertised CPUs), in the same run:

- caliban: `caliban slurm submit` of a 200-experiment sweep (one array, the image
  already built, so the build is a cache check): the command's wall time (validation,
  sbatch --test-only, the store, writing the argument file, one sbatch), then the
  wall time until Slurm has finished every task;
- baseline: what a user without caliban scripts: 200 `sbatch --wrap "docker run ..."`
  calls one after the other, of the same image and command; the loop's time, then
  the wall time until all are done.

Every task is `docker run --rm IMAGE python3 job.py` of a job that sleeps
``--task-seconds`` (default 0: the figure is Slurm's and Docker's own overhead).

Run (root): .venv/bin/python benchmarks/slurm_fanout.py [--jobs 200] [--task-seconds 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from _common import CALIBAN, DOCKER, LABEL, ROOT, caliban, report, timed, workspace

NAME = "caliban-bench-baseline"


def squeue_ours(marker: str) -> list[dict[str, object]]:
    out = subprocess.run(["squeue", "--json"], capture_output=True, text=True, check=True).stdout
    return [j for j in json.loads(out)["jobs"] if marker in str(j.get("comment", ""))]


def wait_done(marker: str, expected: int) -> None:
    """Until every task carrying ``marker`` has ended (polled: Slurm tells nobody)."""
    while True:
        jobs = squeue_ours(marker)
        tasks = [j for j in jobs if j.get("array_task_id") is not None or not j["array_job_id"]]
        ended = [j for j in tasks if j["job_state"] not in ("PENDING", "RUNNING", "COMPLETING")]
        if len(ended) >= expected and len(ended) == len(jobs):
            bad = [j for j in ended if j["job_state"] != "COMPLETED"]
            if bad:
                raise SystemExit(f"{len(bad)} task(s) did not complete: {bad[0]['job_state']}")
            return
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--task-seconds", type=float, default=0.0)
    args = parser.parse_args()
    subprocess.run([str(ROOT / "scripts" / "slurm-cluster.sh"), "start"], check=True)
    with workspace() as (project, env):
        config = project / "sweep.json"
        config.write_text(json.dumps({"i": list(range(args.jobs))}))
        sleep = ("--", "--sleep", str(args.task_seconds))
        caliban(["build", "job.py"], project, env)  # warm-up: build once, untimed

        submit = ["slurm", "submit", "--experiment_config", str(config), "--xgroup", "bench"]
        submit_s = timed(lambda: caliban([*submit, "job.py", *sleep], project, env))
        caliban_done_s = submit_s + timed(lambda: wait_done(LABEL, args.jobs))
        jobs = json.loads(
            subprocess.run(
                [CALIBAN, "status", "--xgroup", "bench", "--max_jobs", "0", "--json"],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        image = str(jobs[0]["image"])
        arrays = {str(j["platform_id"]).split("_")[0] for j in jobs}

        logs = Path(env["CALIBAN_HOME"]) / "baseline"
        logs.mkdir(parents=True)
        marker = f"{LABEL}-baseline"

        def baseline_submit() -> None:
            for i in range(args.jobs):
                task = f"python3 job.py --i {i} {' '.join(sleep[1:])}"
                run = f"{DOCKER} run --rm --label {LABEL} {image} {task}"
                subprocess.run(
                    ["sbatch", "--parsable", f"--job-name={NAME}", f"--comment={marker}",
                     f"--output={logs}/{i}.log", f"--wrap={run}"],
                    capture_output=True,
                    check=True,
                )  # fmt: skip

        baseline_s = timed(baseline_submit)
        baseline_done_s = baseline_s + timed(lambda: wait_done(marker, args.jobs))

    report(
        "slurm_fanout",
        {
            "jobs": args.jobs,
            "task_seconds": args.task_seconds,
            "caliban_arrays": len(arrays),
            "caliban_submit_s": round(submit_s, 2),
            "caliban_all_done_s": round(caliban_done_s, 2),
            "baseline_sbatch_calls": args.jobs,
            "baseline_submit_s": round(baseline_s, 2),
            "baseline_all_done_s": round(baseline_done_s, 2),
            "submit_speedup": round(baseline_s / submit_s, 1),
            "all_done_speedup": round(baseline_done_s / caliban_done_s, 2),
        },
    )


if __name__ == "__main__":
    main()
