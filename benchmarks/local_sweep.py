"""Local sweeps on the real engine: parallel speed-up, per-job overhead, start-up.

Figures (each against a baseline measured in the same run):
- 16 jobs of 2 s with --max_parallel 4, wall time vs the ideal 8 s, and vs
  4 parallel shell loops of `docker run --rm` (what the engine itself allows);
- the same 16 jobs on 4 simulated GPUs, 1 GPU per job, vs the ideal 8 s;
- per-job overhead of caliban (16 jobs of 0 s, one at a time) vs a plain
  sequential `docker run --rm` loop of the same image;
- `caliban --help` start-up time; a second `caliban build` with nothing changed.
Targets: within 1.25x of ideal, overhead under 0.5 s per job, --help under 0.3 s,
no-op build under 1 s.
"""

from __future__ import annotations

import json
import subprocess

from _common import CALIBAN, DOCKER, caliban, median_time, report, timed, workspace

JOBS = 16
SLEEP = 2.0


def main() -> None:
    with workspace() as (project, env):
        config = project / "sweep.json"
        config.write_text(json.dumps({"i": list(range(JOBS))}))
        caliban(["build", "job.py"], project, env)  # warm-up: build once, untimed
        tag = subprocess.run(
            [CALIBAN, "build", "job.py"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]

        sweep = ["run", "--experiment_config", str(config), "job.py", "--", "--sleep", str(SLEEP)]
        parallel = timed(lambda: caliban(["run", "--max_parallel", "4", *sweep[1:]], project, env))
        gpu_env = {**env, "CALIBAN_SIMULATED_GPUS": "0,1,2,3"}
        gpu_sweep = ["run", "--gpus_per_job", "1", *sweep[1:]]
        gpus = timed(lambda: caliban(gpu_sweep, project, gpu_env))
        ideal = JOBS / 4 * SLEEP

        zero = ["run", "--max_parallel", "1", "--experiment_config", str(config), "job.py"]
        ours = timed(lambda: caliban(zero, project, env))

        def docker_loop() -> None:
            for i in range(JOBS):
                subprocess.run(
                    [
                        DOCKER,
                        "run",
                        "--rm",
                        "--init",
                        "--label",
                        "caliban.bench=loop",
                        tag,
                        "--i",
                        str(i),
                    ],
                    capture_output=True,
                    check=True,
                )

        loop = timed(docker_loop)

        def docker_parallel() -> None:
            # The engine's own floor: 4 shell loops of `docker run --rm`, 4 jobs each.
            script = (
                " & ".join(
                    f"(for i in 1 2 3 4; do {DOCKER} run --rm --init --label caliban.bench=par "
                    f"{tag} --sleep {SLEEP} >/dev/null; done)"
                    for _ in range(4)
                )
                + " & wait"
            )
            subprocess.run(["bash", "-c", script], check=True)

        raw_parallel = timed(docker_parallel)
        help_time = median_time(
            lambda: subprocess.run([CALIBAN, "--help"], capture_output=True, check=True), 7
        )
        noop_build = median_time(lambda: caliban(["build", "job.py"], project, env), 3)

    report(
        "local_sweep",
        {
            "jobs": JOBS,
            "sleep_s": SLEEP,
            "parallel4_wall_s": round(parallel, 2),
            "ideal_s": ideal,
            "parallel4_vs_ideal": round(parallel / ideal, 3),
            "gpu4_wall_s": round(gpus, 2),
            "gpu4_vs_ideal": round(gpus / ideal, 3),
            "raw_docker_4_loops_wall_s": round(raw_parallel, 2),
            "parallel4_vs_raw_docker": round(parallel / raw_parallel, 3),
            "per_job_s": round(ours / JOBS, 3),
            "docker_run_loop_per_job_s": round(loop / JOBS, 3),
            "overhead_per_job_s": round((ours - loop) / JOBS, 3),
            "overhead_ratio": round(ours / loop, 3),
            "help_s": round(help_time, 3),
            "noop_build_s": round(noop_build, 3),
            "targets": {
                "vs_ideal": 1.25,
                "overhead_per_job_s": 0.5,
                "help_s": 0.3,
                "noop_build_s": 1.0,
            },
        },
    )


if __name__ == "__main__":
    main()
