"""Pre-warmed slots (CALIBAN_PREWARM=1) on the real engine: the job sees what a plain
start gives it, GPUs stay exclusive, and interrupts and crashes leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from caliban.events import Notice
from caliban.options import ProjectOptions, RunRequest
from caliban.platforms.local.gate import build_helper
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from tests.conftest import (
    CALIBAN,
    DOCKER,
    IN_CI,
    RUN_ID,
    TEST_LABEL,
    MakeProject,
    docker_cli,
    labelled_containers,
    run_cli,
    store_id,
)

pytestmark = [pytest.mark.docker]


@pytest.fixture(autouse=True)
def helper() -> Path:
    """The gate helper must be buildable here (``make test`` sees to it)."""
    path = build_helper(os.environ)
    if path is None:
        reason = "no C compiler with a static C library for the gate helper"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


GATE = "/.caliban-gate/gate"

# Reports what it was given, then writes bytes a log must keep exactly (no final
# newline, a NUL, invalid UTF-8, both streams) and ends as asked: an exit code, or
# a signal when negative.
PROBE = """\
import argparse, json, os, signal, sys, time
p = argparse.ArgumentParser()
p.add_argument("--exit", type=int, default=0)
p.add_argument("--sleep", type=float, default=0)
p.add_argument("--tag", default="")
args = p.parse_args()
start = time.time()
parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read().split(b"\\0")[0].decode()
varies = ("HOSTNAME", "CALIBAN_JOB_ID", "CALIBAN_XGROUP")
env = {k: v for k, v in os.environ.items() if k not in varies}
time.sleep(args.sleep)
report = {"argv": sys.argv, "env": env, "cwd": os.getcwd(), "parent": parent,
          "stdin": sys.stdin.read(), "uid": os.getuid(),
          "gpus": os.environ.get("CALIBAN_GPU_IDS"), "start": start, "end": time.time()}
sys.stdout.write(json.dumps(report) + "\\n")
sys.stdout.flush()
sys.stdout.buffer.write(b"out\\x00\\xff\\xfe tag=" + args.tag.encode() + b" no newline")
sys.stdout.flush()
sys.stderr.buffer.write(b"\\nerr \\xc3\\x28\\n")
sys.stderr.flush()
if args.exit < 0:
    os.kill(os.getpid(), -args.exit)
    time.sleep(5)
sys.exit(args.exit)
"""


def _log(job: JobRecord) -> tuple[dict[str, object], list[bytes]]:
    """The probe's report and the rest of its log's lines, sorted: its two
    streams reach the log in whatever order the engine multiplexes them."""
    lines = Path(job.log_path or "").read_bytes().split(b"\n")
    reports = [line for line in lines if line.startswith(b"{")]
    assert len(reports) == 1, lines
    return json.loads(reports[0]), sorted(line for line in lines if line and line not in reports)


async def _sweep(session: Session, folder: Path, xgroup: str, prewarm: bool) -> list[JobRecord]:
    session.environ = {**session.environ, "CALIBAN_PREWARM": "1" if prewarm else "0"}
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=folder, entry="probe.py"),
            experiments={"exit": [0, 3, -15, 0], "tag": ["x"]},
            xgroup=xgroup,
            max_parallel=2,
        )
    )
    return list(result.jobs)


async def test_a_gated_job_sees_and_gives_what_a_plain_start_does(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project({"probe.py": PROBE})
    plain = await _sweep(session, folder, "plain", prewarm=False)
    warm = await _sweep(session, folder, "warm", prewarm=True)
    expected = [(JobState.SUCCEEDED, 0), (JobState.FAILED, 3), (JobState.FAILED, 143)]
    expected.append((JobState.SUCCEEDED, 0))
    assert [(j.state, j.exit_code) for j in plain] == expected
    assert [(j.state, j.exit_code) for j in warm] == expected
    for a, b in zip(plain, warm, strict=True):
        report_a, rest_a = _log(a)
        report_b, rest_b = _log(b)
        # The gate was in front of the warm jobs only; it runs them as tini does.
        assert report_a.pop("parent") == "/sbin/docker-init"
        assert report_b.pop("parent") == GATE
        for report in (report_a, report_b):
            del report["start"], report["end"]
        assert report_a == report_b
        assert rest_a == rest_b
        assert rest_a == [b"err \xc3\x28", b"out\x00\xff\xfe tag=x no newline"]
    store = await session.store()
    assert labelled_containers(**{"caliban.store": store.store_id}) == []
    events = await store.events(warm[0].job_id)
    assert [state for _, state, _ in events] == ["PLANNED", "RUNNING", "SUCCEEDED"]


def _overlaps(a: dict[str, object], b: dict[str, object]) -> bool:
    return float(a["start"]) < float(b["end"]) and float(b["start"]) < float(a["end"])  # type: ignore[arg-type]


@pytest.mark.parametrize("per_job", [1, 2])
async def test_gated_jobs_never_share_a_gpu(
    session: Session, make_project: MakeProject, per_job: int
) -> None:
    """4 simulated GPUs: each job reports from inside the ids it was given."""
    session.environ = {
        **session.environ,
        "CALIBAN_PREWARM": "1",
        "CALIBAN_SIMULATED_GPUS": "0,1,2,3",
    }
    result = await session.run(
        RunRequest(
            project=ProjectOptions(
                folder=make_project({"probe.py": PROBE}), entry="probe.py", use_gpu=True
            ),
            experiments={"tag": [str(i) for i in range(8)]},
            script_args=("--sleep", "0.7"),
            gpus_per_job=per_job,
        )
    )
    assert result.ok, [(j.state, j.message) for j in result.jobs]
    reports = []
    for job in result.jobs:
        report, _ = _log(job)
        assert report["parent"] == GATE
        ids = str(report["gpus"]).split(",")
        assert len(ids) == per_job and ids == job.details["gpu_ids"]
        reports.append(report)
    for i, a in enumerate(reports):
        for b in reports[i + 1 :]:
            if _overlaps(a, b):
                assert not set(str(a["gpus"]).split(",")) & set(str(b["gpus"]).split(","))


def _containers(store: str, *filters: str) -> list[str]:
    args = ["ps", "-aq", "--filter", f"label=caliban.store={store}"]
    for f in filters:
        args += ["--filter", f]
    return docker_cli(*args).split()


def _never_ran(store: str) -> set[str]:
    """Job ids of the store's containers whose gate helper ended without running
    the job (it says so in the container's own output)."""
    out = set()
    for line in docker_cli(
        "ps", "-a", "--filter", f"label=caliban.store={store}", "--filter", "label=caliban.gate",
        "--format", '{{.Label "caliban.job"}}',
    ).split():  # fmt: skip
        logs = subprocess.run(
            [DOCKER, "logs", f"caliban-{line}"], capture_output=True, text=True, check=True
        )
        if "the job was not started" in logs.stdout + logs.stderr:
            assert "tag=" not in logs.stdout + logs.stderr
            out.add(line)
    return out


def _wait_warm(home: Path, count: int, timeout: float = 120) -> str:
    """Until ``count`` containers run, some of them gated (label caliban.gate)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (home / "caliban.db").exists():
            try:
                store = store_id(home)
            except (sqlite3.Error, LookupError):  # being created: no id yet
                store = ""
            if store and len(_containers(store, "status=running", "label=caliban.gate")) >= count:
                return store
        time.sleep(0.2)
    raise AssertionError(f"{count} pre-warmed containers never started")


def _states(home: Path) -> list[str]:
    with sqlite3.connect(home / "caliban.db") as db:
        return sorted(r[0] for r in db.execute("SELECT state FROM jobs").fetchall())


def _args(folder: Path, sleep: str) -> list[str]:
    config = folder / "sweep.json"
    config.write_text(json.dumps({"tag": ["a", "b", "c", "d"]}))
    return [
        "run", "--experiment_config", str(config), "--xgroup", "warm", "--max_parallel", "2",
        "probe.py", "--", "--sleep", sleep,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_removes_the_gated_containers_too(
    make_project: MakeProject, env: dict[str, str], home: Path, sig: signal.Signals
) -> None:
    folder = make_project({"probe.py": PROBE})
    warm_env = {**env, "CALIBAN_PREWARM": "1"}
    proc = subprocess.Popen(
        [CALIBAN, *_args(folder, "60")], cwd=folder, env=warm_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    store = _wait_warm(home, 4)  # 2 jobs running, 2 waiting behind their gates
    assert _states(home).count("PLANNED") == 2
    started = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert time.monotonic() - started < 30
    assert labelled_containers(**{"caliban.store": store}) == []
    assert _states(home) == ["STOPPED"] * 4


@pytest.mark.slow
def test_after_kill_9_a_gated_container_is_stopped_never_adopted(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    folder = make_project({"probe.py": PROBE})
    warm_env = {**env, "CALIBAN_PREWARM": "1"}
    args = _args(folder, "3")
    proc = subprocess.Popen(
        [CALIBAN, *args], cwd=folder, env=warm_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    store = _wait_warm(home, 4)
    proc.kill()
    proc.wait()
    assert _states(home) == ["PLANNED", "PLANNED", "RUNNING", "RUNNING"]
    assert len(labelled_containers(**{"caliban.store": store})) == 4
    assert len(_containers(store, "label=caliban.gate")) == 4
    deadline = time.monotonic() + 120
    while _containers(store, "status=running") and time.monotonic() < deadline:
        time.sleep(0.2)  # the jobs end on their own; the gates see EOF and end unrun

    # The two gated ones end too, unrun: their helper saw that caliban is gone.
    with sqlite3.connect(home / "caliban.db") as db:
        planned = {r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'PLANNED'")}
    assert _never_ran(store) == planned

    status = run_cli(["status", "--xgroup", "warm", "--json"], cwd=folder, env=env)
    assert status.returncode == 0, status.stderr
    jobs = json.loads(status.stdout)
    # Those that never ran are PLANNED again, exactly as after a plain run's crash.
    assert sorted(j["state"] for j in jobs) == ["PLANNED", "PLANNED", "SUCCEEDED", "SUCCEEDED"]
    for job in jobs:
        log = Path(job["log_path"])
        if job["state"] == "PLANNED":
            assert job["exit_code"] is None
            assert not log.exists() or b"tag=" not in log.read_bytes()
        else:
            assert b"no newline" in log.read_bytes()
    assert labelled_containers(**{"caliban.store": store}) == []

    rerun = run_cli(args, cwd=folder, env=warm_env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # The two that never ran run now, once each; the two that did are not run again.
    assert _states(home) == ["SUCCEEDED"] * 4


# A job for an image with nothing in it but this program: no shell, no libc.
STATIC_PROBE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    buf[n < 0 ? 0 : n] = 0;
    printf("exe=%s pid=%d ppid=%d\n", buf, (int)getpid(), (int)getppid());
    for (int i = 0; i < argc; i++)
        printf("arg=%s\n", argv[i]);
    const char *gpus = getenv("CALIBAN_GPU_IDS");
    printf("gpus=%s\n", gpus ? gpus : "-");
    int code = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--exit") == 0)
            code = atoi(argv[i + 1]);
    return code;
}
"""


@pytest.fixture
def shell_less_image(tmp_path: Path) -> str:
    context = tmp_path / "scratch-image"
    context.mkdir()
    (context / "probe.c").write_text(STATIC_PROBE)
    cc = shutil.which("cc") or "gcc"
    subprocess.run(
        [cc, "-static", "-O2", "-o", str(context / "probe"), str(context / "probe.c")],
        check=True,
        capture_output=True,
    )
    (context / "Dockerfile").write_text('FROM scratch\nCOPY probe /probe\nENTRYPOINT ["/probe"]\n')
    tag = f"caliban-test-noshell:{RUN_ID}"
    docker_cli("build", "-q", "--label", f"{TEST_LABEL}={RUN_ID}", "-t", tag, str(context))
    assert docker_cli("run", "--rm", "--entrypoint", "/bin/sh", tag, check=False) == ""
    return tag


async def test_an_image_without_a_shell_runs_behind_the_gate(
    session: Session, make_project: MakeProject, shell_less_image: str
) -> None:
    session.environ = {
        **session.environ,
        "CALIBAN_PREWARM": "1",
        "CALIBAN_SIMULATED_GPUS": "0,1",
    }
    result = await session.run(
        RunRequest(
            project=ProjectOptions(
                folder=make_project({}), image_id=shell_less_image, use_gpu=True
            ),
            experiments={"exit": [0, 7, 0, 5]},
            max_parallel=2,
        )
    )
    assert [(j.state, j.exit_code) for j in result.jobs] == [
        (JobState.SUCCEEDED, 0),
        (JobState.FAILED, 7),
        (JobState.SUCCEEDED, 0),
        (JobState.FAILED, 5),
    ]
    for job in result.jobs:
        lines = Path(job.log_path or "").read_text().splitlines()
        # The job is the image's own program, a child of the gate helper.
        assert lines[0].startswith("exe=/probe pid=")
        assert lines[1:4] == ["arg=/probe", "arg=--exit", f"arg={job.exit_code}"]
        assert lines[4] == f"gpus={','.join(job.details['gpu_ids'])}"  # type: ignore[arg-type]
    store = await session.store()
    assert labelled_containers(**{"caliban.store": store.store_id}) == []


async def test_without_a_helper_prewarm_falls_back_to_plain_starts(
    session: Session, make_project: MakeProject, tmp_path: Path
) -> None:
    notices: list[str] = []
    sink = session.sink

    def seen(event: object) -> None:
        if isinstance(event, Notice):
            notices.append(event.text)
        sink(event)  # type: ignore[arg-type]

    session.sink = seen
    empty_cache = tmp_path / "no-cache"
    session.environ = {
        **session.environ,
        "CALIBAN_PREWARM": "1",
        "CALIBAN_CACHE": str(empty_cache),
        "CC": "/bin/false",  # a compiler that never compiles
    }
    folder = make_project({"probe.py": PROBE})
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=folder, entry="probe.py"),
            experiments={"exit": [0, 3]},
            max_parallel=2,
        )
    )
    assert [(j.state, j.exit_code) for j in result.jobs] == [
        (JobState.SUCCEEDED, 0),
        (JobState.FAILED, 3),
    ]
    for job in result.jobs:
        report, _ = _log(job)
        assert report["parent"] == "/sbin/docker-init"
    assert any("plain starts" in n for n in notices), notices
    assert not any(empty_cache.glob("gate-*"))
