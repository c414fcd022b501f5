"""Cores held exclusively (--cpus_per_job) on the real engine, next to GPUs.

This machine has 2 cores and no GPU. What it proves for real: containers run
inside the cpuset caliban chose (read from inside the container), two jobs
running at the same time never share a core, placement follows the GPU
topology, and parallelism is bounded by cores. Sweeps that need more cores
than the machine has run against simulated cores (CALIBAN_SIMULATED_CPUS):
scheduled and recorded, but not enforced by the engine.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest

from caliban.core.topology import parse_cpu_list
from caliban.options import ProjectOptions, RunRequest
from caliban.session import Session
from caliban.spec import JobState
from tests.conftest import CALIBAN, MakeProject, job_reports

pytestmark = [pytest.mark.docker]

CPUS_PY = """
import json, os, sys, time
time.sleep(float(sys.argv[sys.argv.index("--sleep") + 1]) if "--sleep" in sys.argv else 0)
start = time.time()
time.sleep(1.0)
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
try:
    effective = open("/sys/fs/cgroup/cpuset.cpus.effective").read().strip()
except OSError:
    effective = None
print(json.dumps({
    "start": start, "end": time.time(),
    "allowed": status["Cpus_allowed_list"].strip(), "mems": status["Mems_allowed_list"].strip(),
    "effective": effective, "caliban_cpus": os.environ.get("CALIBAN_CPUS"),
    "gpus": os.environ.get("CALIBAN_GPU_IDS"),
}), flush=True)
"""

# `nvidia-smi topo -m` as a 2-core box with 4 GPUs would print it: GPUs 0 and 1
# next to core 0, GPUs 2 and 3 next to core 1.
TOPOLOGY = (
    "\tGPU0\tGPU1\tGPU2\tGPU3\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
    "GPU0\t X \tNV4\tSYS\tSYS\t0\t0\tN/A\n"
    "GPU1\tNV4\t X \tSYS\tSYS\t0\t0\tN/A\n"
    "GPU2\tSYS\tSYS\t X \tNV4\t1\t0\tN/A\n"
    "GPU3\tSYS\tSYS\tNV4\t X \t1\t0\tN/A\n"
    "\nLegend:\n\n  X    = Self\n"
)


def _overlaps(a: dict[str, object], b: dict[str, object]) -> bool:
    return float(a["start"]) < float(b["end"]) and float(b["start"]) < float(a["end"])  # type: ignore[arg-type]


def _reports(result: object) -> list[dict[str, object]]:
    jobs = result.jobs  # type: ignore[attr-defined]
    return [job_reports(Path(j.log_path or "").read_text())[0] for j in jobs]


def _max_concurrency(reports: list[dict[str, object]]) -> int:
    points = sorted(
        [(float(r["start"]), 1) for r in reports] + [(float(r["end"]), -1) for r in reports]  # type: ignore[arg-type]
    )
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
async def test_jobs_run_in_their_own_cores_near_their_gpus(
    session: Session, make_project: MakeProject, tmp_path: Path
) -> None:
    cores = sorted(os.sched_getaffinity(0))[:2]
    topo = tmp_path / "topo.txt"
    topo.write_text(
        TOPOLOGY.replace("\t0\t0\tN/A", f"\t{cores[0]}\t0\tN/A").replace(
            "\t1\t0\tN/A", f"\t{cores[1]}\t0\tN/A"
        )
    )
    session.environ = {
        **session.environ,
        "CALIBAN_SIMULATED_GPUS": "0,1,2,3",
        "CALIBAN_GPU_TOPOLOGY": str(topo),
    }
    result = await session.run(
        RunRequest(
            project=ProjectOptions(
                folder=make_project({"cpus.py": CPUS_PY}), entry="cpus.py", use_gpu=True
            ),
            experiments={"tag": [str(i) for i in range(6)]},
            gpus_per_job=1,
            cpus_per_job=1,
        )
    )
    assert result.ok, [(j.state, j.message) for j in result.jobs]
    reports = _reports(result)
    near = {"0": cores[0], "1": cores[0], "2": cores[1], "3": cores[1]}
    for report in reports:
        allowed = parse_cpu_list(str(report["allowed"]))
        assert len(allowed) == 1 and report["caliban_cpus"] == str(allowed[0])
        if report["effective"] is not None:  # cgroup v2
            assert parse_cpu_list(str(report["effective"])) == allowed
        # The GPU's own core whenever one was free: with 2 jobs on 2 cores, always.
        assert allowed[0] == near[str(report["gpus"])]
        # NUMA node 0 from the topology: on this one-node machine this shows only that
        # the engine took the cpuset.mems, not that memory moved.
        assert report["mems"] == "0"
    for a, b in itertools.combinations(reports, 2):
        if _overlaps(a, b):
            assert a["allowed"] != b["allowed"] and a["gpus"] != b["gpus"]
    # 4 GPUs but 2 cores: cores bound the default parallelism, and jobs did overlap.
    assert _max_concurrency(reports) == 2
    store = await session.store()
    recorded = await store.jobs(job_ids=[j.job_id for j in result.jobs])
    assert {str(j.details["cpus"]) for j in recorded} <= {str(c) for c in cores}
    assert all(j.details["cpus_per_job"] == 1 and j.details["numa_node"] == 0 for j in recorded)


async def test_nogpu_jobs_are_packed_on_cores(session: Session, make_project: MakeProject) -> None:
    usable = sorted(os.sched_getaffinity(0))
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=make_project({"cpus.py": CPUS_PY}), entry="cpus.py"),
            experiments={"tag": ["a", "b", "c"]},
            cpus_per_job=len(usable),
        )
    )
    assert result.ok
    reports = _reports(result)
    # All cores each: the jobs run one at a time, each pinned to every usable core.
    assert _max_concurrency(reports) == 1
    assert all(parse_cpu_list(str(r["allowed"])) == tuple(usable) for r in reports)


async def test_sweep_with_more_cores_than_the_machine_runs_on_simulated_cores(
    session: Session, make_project: MakeProject
) -> None:
    """The `--gpus_per_job 1 --cpus_per_job 2` sweep on 4 simulated GPUs and 8 paper cores."""
    session.environ = {
        **session.environ,
        "CALIBAN_SIMULATED_GPUS": "0,1,2,3",
        "CALIBAN_SIMULATED_CPUS": "0-7",
    }
    result = await session.run(
        RunRequest(
            project=ProjectOptions(
                folder=make_project({"cpus.py": CPUS_PY}), entry="cpus.py", use_gpu=True
            ),
            experiments={"tag": [str(i) for i in range(8)]},
            gpus_per_job=1,
            cpus_per_job=2,
        )
    )
    assert result.ok
    reports = _reports(result)
    machine = sorted(os.sched_getaffinity(0))
    for report in reports:
        told = parse_cpu_list(str(report["caliban_cpus"]))
        assert len(told) == 2 and set(told) <= set(range(8))
        # Paper cores are not enforced: the container may use the whole machine.
        assert parse_cpu_list(str(report["allowed"])) == tuple(machine)
    for a, b in itertools.combinations(reports, 2):
        if _overlaps(a, b):
            assert not set(parse_cpu_list(str(a["caliban_cpus"]))) & set(
                parse_cpu_list(str(b["caliban_cpus"]))
            )
    assert 2 <= _max_concurrency(reports) <= 4
    assert all(j.state is JobState.SUCCEEDED for j in result.jobs)


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CALIBAN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "extra_env", "needle"),
    [
        (["--cpus_per_job", "100000"], {}, "--cpus_per_job 100000 is more than the"),
        (["--cpus_per_job", "0"], {}, "--cpus_per_job"),
        (
            ["--cpus_per_job", "1", "--docker_run_args=--cpuset-cpus 0"],
            {},
            # Refused as unsupported today; once the flag table takes it, as caliban's to set.
            "--cpuset-cpus",
        ),
        (["--cpus_per_job", "1"], {"CALIBAN_SIMULATED_CPUS": "3-1"}, "CALIBAN_SIMULATED_CPUS"),
        (["--cpus_per_job", "1"], {"CALIBAN_GPU_TOPOLOGY": "/nonexistent/topo"}, "cannot read"),
        (["--cpus_per_job", "9"], {"CALIBAN_SIMULATED_CPUS": "0-7"}, "than the 8 CPU core(s)"),
        (["--gpu_ids", "0,zz"], {}, "'zz' is not a GPU index or UUID"),
    ],
)
def test_bad_core_requests_get_one_line_and_exit_2(
    make_project: MakeProject,
    tmp_path: Path,
    args: list[str],
    extra_env: dict[str, str],
    needle: str,
) -> None:
    folder = make_project()
    (folder / "exp.json").write_text(json.dumps({"tag": ["a", "b"]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBAN_SIMULATED")}
    env.update(
        CALIBAN_HOME=str(tmp_path / "home"),
        COLUMNS="200",
        DOCKER_HOST="unix:///nonexistent/docker.sock",  # building would fail with exit 1
        **extra_env,
    )
    mode = [] if "--gpu_ids" in args else ["--nogpu"]
    result = _cli(["run", *mode, *args, "--experiment_config", "exp.json", "job.py"], folder, env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "Traceback" not in result.stderr, lines
    assert needle in result.stderr, result.stderr
    assert not (tmp_path / "home" / "caliban.db").exists()
