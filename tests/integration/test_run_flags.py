"""docker run flags and --docker_create_json on the real engine, checked from inside the job."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from caliban.options import ProjectOptions, RunRequest
from caliban.session import Session
from caliban.spec import JobState
from tests.conftest import MakeProject, run_cli

pytestmark = [pytest.mark.docker]

# Reads back, from inside the container, what each flag should have changed.
PROBE = textwrap.dedent(
    """
    import json, os

    def read(*paths):
        for path in paths:
            if os.path.exists(path):
                with open(path) as f:
                    return f.read().strip()
        return None

    with open("/etc/resolv.conf") as f:
        dns = [line.split()[1] for line in f if line.startswith("nameserver")]
    print(json.dumps({
        "cpus": sorted(os.sched_getaffinity(0)),
        "groups": sorted(os.getgroups()),
        "port_start": read("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
        "dns": dns,
        # cgroup v1 limits memory+swap; v2 limits swap alone.
        "memsw_v1": read("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
        "swap_v2": read("/sys/fs/cgroup/memory.swap.max"),
        "from_json": os.environ.get("FROM_JSON"),
    }), flush=True)
    """
)


def _report(log_path: str | None) -> dict[str, object]:
    assert log_path is not None
    reports = [
        json.loads(line[line.index("{") :])
        for line in Path(log_path).read_text().splitlines()
        if '"port_start"' in line
    ]
    assert len(reports) == 1, reports
    report: dict[str, object] = reports[0]
    return report


def _swap_limit(report: dict[str, object], memory: int, swap: int) -> None:
    if report["memsw_v1"] is not None:
        assert int(str(report["memsw_v1"])) == swap
    else:
        assert report["swap_v2"] is not None, "no cgroup swap limit visible in the container"
        assert int(str(report["swap_v2"])) == swap - memory


async def test_newly_supported_flags_take_effect(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project({"probe.py": PROBE})
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=folder, entry="probe.py"),
            docker_run_args=(
                "--cpuset-cpus", "0",
                "-m", "256m",
                "--memory-swap", "512m",
                "--group-add", "4242",
                "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",
                "--dns", "192.0.2.53",
            ),
        )
    )  # fmt: skip
    (job,) = result.jobs
    assert job.state is JobState.SUCCEEDED, job
    report = _report(job.log_path)
    assert report["cpus"] == [0]
    assert 4242 in report["groups"]  # type: ignore[operator]
    assert report["port_start"] == "0"
    assert report["dns"] == ["192.0.2.53"]
    _swap_limit(report, 256 << 20, 512 << 20)


async def test_create_json_is_merged_into_the_container(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project({"probe.py": PROBE})
    fragment = {
        "Env": ["FROM_JSON=yes"],
        "HostConfig": {
            "CpusetCpus": "0",
            "Memory": 128 << 20,
            "MemorySwap": 384 << 20,
            "GroupAdd": ["4343"],
            "Sysctls": {"net.ipv4.ip_unprivileged_port_start": "80"},
        },
    }
    result = await session.run(
        RunRequest(
            project=ProjectOptions(folder=folder, entry="probe.py"),
            # The flag's list and the fragment's list are joined, not replaced.
            docker_run_args=("--group-add", "4242"),
            docker_create_json=fragment,
        )
    )
    (job,) = result.jobs
    assert job.state is JobState.SUCCEEDED, job
    report = _report(job.log_path)
    assert report["from_json"] == "yes"
    assert report["cpus"] == [0]
    groups = report["groups"]
    assert isinstance(groups, list) and {4242, 4343} <= set(groups)
    assert report["port_start"] == "80"
    _swap_limit(report, 128 << 20, 384 << 20)


@pytest.mark.parametrize(
    ("fragment", "needle"),
    [
        # HostConfig.Annotations arrived in Engine API 1.43; this daemon speaks 1.41.
        ({"HostConfig": {"Annotations": {"a": "b"}}}, "unknown field HostConfig.Annotations"),
        ({"HostConfig": {"CpusetCpus": 0}}, "HostConfig.CpusetCpus must be a string"),
    ],
)
def test_a_fragment_the_daemons_api_rejects_stops_everything(
    make_project: MakeProject, env: dict[str, str], fragment: dict[str, object], needle: str
) -> None:
    folder = make_project({"create.json": json.dumps(fragment)})
    result = run_cli(
        ["run", "--nogpu", "--docker_create_json", "create.json", "job.py"],
        cwd=folder,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert "Engine API 1.41" in lines[0] or "must be" in lines[0]
    assert not (Path(env["CALIBAN_HOME"]) / "caliban.db").exists()
    assert "build" not in result.stdout.lower()
