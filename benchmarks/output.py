"""A local job's output: how fast caliban takes it in, and in how much memory.

Two job shapes: 50 MB in lines of 100 bytes, and 20 MB with no newline at all.
For each, against baselines measured in the same run on the same image:
- `caliban run` of the job vs `docker run IMAGE > /dev/null` of it (the
  engine and its CLI streaming the same output live), and vs
  `docker logs CONTAINER > /dev/null` of the same job's finished container;
- what the output costs caliban itself: (caliban run of the job - of a silent
  job) - (docker run of the job - of a silent job). The engine's own share
  (its log driver stores every line) is paid by `docker run` too;
- CPU seconds of the caliban process beyond the silent job's (steadier than
  wall time on a busy machine), and its peak RSS;
- that the log file holds every byte (its size).
Times are the best of REPEAT runs (the machine is shared). Targets: the 50 MB
job adds under 2 s; peak RSS under 150 MB for both shapes.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from _common import CALIBAN, DOCKER, LABEL, caliban, median_time, report, timed, workspace

MB = 1 << 20
JOB = """\
import sys
mode = sys.argv[sys.argv.index("--mode") + 1]
size = int(sys.argv[sys.argv.index("--mb") + 1]) << 20
out = sys.stdout.buffer
if mode == "lines":
    line = b"x" * 99 + b"\\n"
    block = line * 655
    for _ in range(size // len(block)):
        out.write(block)
    out.write(line * ((size % len(block)) // len(line)))
elif mode == "noline":
    block = b"y" * 65536
    for _ in range(size // len(block)):
        out.write(block)
out.flush()
"""
SHAPES = {"lines_50mb": ("lines", 50), "noline_20mb": ("noline", 20)}
SILENT = ["--mode", "none", "--mb", "0"]
REPEAT = 2


def _caliban_run(
    project: Path, env: dict[str, str], args: list[str]
) -> tuple[float, int, str, float]:
    """Wall time, peak RSS (bytes), stdout and CPU seconds of one `caliban run`."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [CALIBAN, "run", "job.py", "--", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"caliban run failed:\n{out.decode(errors='replace')}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, usage.ru_maxrss * 1024, out.decode(errors="replace"), cpu


def _docker_logs(tag: str, args: list[str]) -> float:
    cid = subprocess.run(
        [DOCKER, "run", "-d", "--label", LABEL, tag, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([DOCKER, "wait", cid], capture_output=True, check=True)
    with open(os.devnull, "wb") as null:
        return median_time(
            lambda: subprocess.run([DOCKER, "logs", cid], stdout=null, stderr=null, check=True), 3
        )


def _docker_run(tag: str, args: list[str]) -> float:
    with open(os.devnull, "wb") as null:
        return min(
            timed(
                lambda: subprocess.run(
                    [DOCKER, "run", "--rm", "--label", LABEL, tag, *args], stdout=null, check=True
                )
            )
            for _ in range(REPEAT)
        )


def _log_size(home: Path) -> int:
    logs = sorted((home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].stat().st_size


def main() -> None:
    figures: dict[str, object] = {}
    with workspace() as (project, env):
        (project / "job.py").write_text(JOB)
        caliban(["build", "job.py"], project, env)  # build once, untimed
        tag = subprocess.run(
            [CALIBAN, "build", "job.py"], cwd=project, env=env, capture_output=True, text=True
        ).stdout.split()[-1]
        home = Path(env["CALIBAN_HOME"])
        silent, silent_rss, _, silent_cpu = min(
            _caliban_run(project, env, SILENT) for _ in range(3)
        )
        docker_silent = _docker_run(tag, SILENT)
        figures["silent_job_s"] = round(silent, 3)
        figures["silent_job_docker_run_s"] = round(docker_silent, 3)
        figures["silent_job_peak_rss_mb"] = round(silent_rss / MB, 1)
        figures["silent_job_caliban_cpu_s"] = round(silent_cpu, 3)
        for name, (mode, size) in SHAPES.items():
            args = ["--mode", mode, "--mb", str(size)]
            seconds, rss, out, cpu = min(_caliban_run(project, env, args) for _ in range(REPEAT))
            logged = _log_size(home)
            logs_s = _docker_logs(tag, args)
            run_s = _docker_run(tag, args)
            added = (seconds - silent) - (run_s - docker_silent)
            figures[name] = {
                "caliban_run_s": round(seconds, 3),
                "docker_run_to_devnull_s": round(run_s, 3),
                "caliban_vs_docker_run": round(seconds / run_s, 2),
                "docker_logs_s": round(logs_s, 3),
                "caliban_vs_docker_logs": round(seconds / logs_s, 2),
                "added_by_output_s": round(added, 3),
                "caliban_cpu_s": round(cpu, 3),
                "cpu_added_by_output_s": round(cpu - silent_cpu, 3),
                "peak_rss_mb": round(rss / MB, 1),
                "log_bytes": logged,
                "log_complete": logged == size * MB,
                "terminal_lines": out.count("\n"),
            }
    figures["targets"] = {"lines_50mb_added_s": 2.0, "peak_rss_mb": 150}
    report("output", figures)


if __name__ == "__main__":
    main()
