"""The `caliban cloud` / status / stop / resubmit commands as a user runs them, against the
local Vertex and OAuth servers: output, exit codes, and crash safety under kill -9 and Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import anyio
import pytest

from tests.conftest import CALIBAN, MakeProject
from tests.fakes.oauth import FakeOAuth, make_service_account, write_credentials
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import IMAGE, JOB_LABEL, caliban, cli_env, db_jobs

CONSOLE = re.compile(
    r"https://console\.cloud\.google\.com/vertex-ai/locations/us-central1/training/(\d+)"
    r"\?project=test-proj"
)


@pytest.fixture
def folder(make_project: MakeProject) -> Path:
    return make_project()


@pytest.fixture
def env(tmp_path: Path, service_account_file: Path, vertex_server: FakeVertex) -> dict[str, str]:
    """What the ``caliban`` processes under test see: the fake key and Vertex endpoint."""
    return cli_env(tmp_path, service_account_file, vertex_server)


def keyless_env(tmp_path: Path, vertex: FakeVertex) -> dict[str, str]:
    """The environment of a user who has named no key file (ADC or metadata server may answer)."""
    env = cli_env(tmp_path, tmp_path / "unused.json", vertex)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS")
    return env


def _sweep(folder: Path, n: int) -> Path:
    path = folder / "sweep.json"
    path.write_text(json.dumps({"lr": [round(0.001 * (i + 1), 3) for i in range(n)]}))
    return path


def _assert_server_matches_store(vertex: FakeVertex, home: Path, xgroup: str, n: int) -> None:
    rows = db_jobs(home, xgroup)
    assert len(rows) == n, len(rows)
    assert vertex.duplicates(JOB_LABEL) == {}
    remote = {j.labels[JOB_LABEL]: j.name for j in vertex.jobs}
    assert len(remote) == n == len(vertex.jobs)
    for job_id, state, platform_id in rows:
        assert state == "SUBMITTED", (job_id, state)
        assert platform_id == remote[job_id]


async def test_cloud_then_status_then_stop(
    tmp_path: Path, folder: Path, vertex_server: FakeVertex, env: dict[str, str]
) -> None:
    sweep = _sweep(folder, 6)
    args = [
        "cloud",
        "--experiment_config",
        str(sweep),
        "--image_tag",
        IMAGE,
        "--xgroup",
        "cli",
        "--rate_limit",
        "600",
    ]
    done = await caliban([*args, "job.py", "--", "--epochs", "2"], cwd=folder, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 job(s) in experiment group cli" in done.stdout
    assert "6 job(s): 6 submitted" in done.stdout
    assert "caliban status --xgroup cli" in done.stdout
    assert not CONSOLE.search(done.stdout)  # one line per job only with --verbose
    _assert_server_matches_store(vertex_server, tmp_path / "home", "cli", 6)
    assert vertex_server.jobs[0].body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"] == [
        "--epochs",
        "2",
        "--lr",
        "0.001",
    ]

    names = [j.name for j in vertex_server.jobs]
    vertex_server.advance(names[0], "JOB_STATE_RUNNING")
    vertex_server.advance(names[1], "JOB_STATE_SUCCEEDED")
    vertex_server.fail(names[2], 13, "exit status 1")
    status = await caliban(["status", "--xgroup", "cli"], cwd=folder, env=env)
    assert status.returncode == 0, status.stderr
    for state, count in (("RUNNING", 1), ("SUCCEEDED", 1), ("FAILED", 1), ("SUBMITTED", 3)):
        assert status.stdout.count(state) == count, status.stdout
    assert status.stderr == ""

    stop = await caliban(["stop", "--xgroup", "cli", "--yes"], cwd=folder, env=env)
    assert stop.returncode == 0, stop.stderr
    assert vertex_server.cancel_calls == 4  # the running and the three queued ones
    assert {vertex_server.job(n).state for n in names[3:]} == {"JOB_STATE_CANCELLED"}
    as_json = await caliban(["status", "--xgroup", "cli", "--json"], cwd=folder, env=env)
    states = sorted(j["state"] for j in json.loads(as_json.stdout))
    assert states == ["FAILED", "STOPPED", "STOPPED", "STOPPED", "STOPPED", "SUCCEEDED"]


async def test_status_uses_the_environment_when_the_recorded_key_is_gone(
    tmp_path: Path,
    folder: Path,
    service_account_file: Path,
    vertex_server: FakeVertex,
    env: dict[str, str],
) -> None:
    # Submitted with a relative --cloud_key: recorded as an absolute path.
    local_key = folder / "key.json"
    local_key.write_text(service_account_file.read_text())
    env.pop("GOOGLE_APPLICATION_CREDENTIALS")
    done = await caliban(
        ["cloud", "--cloud_key", "key.json", "--image_tag", IMAGE, "--xgroup", "k", "job.py"],
        cwd=folder,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    vertex_server.advance(to="JOB_STATE_RUNNING")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = await caliban(["status", "--xgroup", "k"], cwd=elsewhere, env=env)
    assert "RUNNING" in status.stdout and status.stderr == "", status.stdout + status.stderr
    # The key is deleted; GOOGLE_APPLICATION_CREDENTIALS names another copy.
    local_key.unlink()
    vertex_server.advance(to="JOB_STATE_SUCCEEDED")
    status = await caliban(["status", "--xgroup", "k"], cwd=elsewhere, env=env)
    assert "could not refresh" in status.stderr and "RUNNING" in status.stdout
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(service_account_file)
    status = await caliban(["status", "--xgroup", "k"], cwd=elsewhere, env=env)
    assert "SUCCEEDED" in status.stdout and status.stderr == "", status.stdout + status.stderr


async def test_verbose_prints_one_console_url_per_job(
    folder: Path, vertex_server: FakeVertex, env: dict[str, str]
) -> None:
    vertex_server.fail_next_creates(1, 503)
    done = await caliban(
        [
            "cloud",
            "--verbose",
            "--experiment_config",
            str(_sweep(folder, 5)),
            "--image_tag",
            IMAGE,
            "--max_inflight",
            "1",
            "--rate_limit",
            "600",
            "job.py",
        ],
        cwd=folder,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ids = CONSOLE.findall(done.stdout)
    assert sorted(ids) == sorted(j.job_id for j in vertex_server.jobs)
    assert re.search(r"\[1/5 \w{8}\] submitted: https://console", done.stdout)
    assert re.search(r"retry 1 in \d+\.\ds: creating a Vertex custom job", done.stderr)
    assert "5 job(s): 5 submitted" in done.stdout


async def test_dry_run_prints_every_body_and_writes_nothing(
    tmp_path: Path,
    folder: Path,
    vertex_server: FakeVertex,
    oauth_server: FakeOAuth,
    env: dict[str, str],
) -> None:
    done = await caliban(
        [
            "cloud",
            "--dry_run",
            "--experiment_config",
            str(_sweep(folder, 3)),
            "--image_tag",
            IMAGE,
            "--gpu_spec",
            "1xT4",
            "-l",
            "team=ml",
            "job.py",
        ],
        cwd=folder,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    # Piped stdout is one JSON document (nothing wrapped), the narration is on stderr.
    requests = json.loads(done.stdout)
    assert [r["parent"] for r in requests] == ["projects/test-proj/locations/us-central1"] * 3
    bodies = [r["customJob"] for r in requests]
    assert len({b["displayName"] for b in bodies}) == 3
    pools = [b["jobSpec"]["workerPoolSpecs"][0] for b in bodies]
    assert [p["machineSpec"]["acceleratorType"] for p in pools] == ["NVIDIA_TESLA_T4"] * 3
    assert all(b["labels"]["team"] == "ml" for b in bodies)
    assert "dry run: 3 Vertex job(s)" in done.stderr
    assert all(v == 0 for v in vertex_server.counters().values())
    assert oauth_server.token_requests == 0
    assert not (tmp_path / "home").exists()


BAD_INPUT = [
    (["--machine_type", "n1-standrd-8"], "unknown machine type 'n1-standrd-8'; did you mean"),
    (["--gpu_spec", "2xT5"], "unknown GPU type 'T5'; did you mean T4?"),
    (["--gpu_spec", "8xA100", "--machine_type", "n1-standard-8"], "cannot take 8xA100"),
    (["--region", "us-centrl1"], "unknown region 'us-centrl1'; did you mean us-central1"),
    (["--gpu_spec", "8xH100", "--region", "us-west2"], "H100 is not offered in us-west2"),
    (["--tpu_spec", "8xV3", "--gpu_spec", "1xT4"], "GPUs or TPUs, not both"),
    (["--rate_limit", "0"], "must be positive"),
    (["--spot", "--flex_start"], "pick one"),
    (["--reservation", "any", "--spot"], "never use reservations"),
    (["--flex_start", "--max_wait", "soon"], "not a duration"),
    (["--capacity", "spot,cheap"], "rungs are"),
]


async def test_placement_flags_reach_the_stand_in_as_a_valid_body(
    folder: Path, vertex_server: FakeVertex, env: dict[str, str]
) -> None:
    flags = ["--flex_start", "--max_wait", "2h", "--timeout", "12h", "--no_platform_retries"]
    done = await caliban(
        ["cloud", "--image_tag", IMAGE, "--gpu_spec", "1xL4", *flags, "job.py"], cwd=folder, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (job,) = vertex_server.jobs
    assert job.spec["jobSpec"]["scheduling"] == {
        "strategy": "FLEX_START",
        "maxWaitDuration": "7200s",
        "timeout": "43200s",
        "disableRetries": True,
    }


@pytest.mark.parametrize(("flags", "needle"), BAD_INPUT)
async def test_bad_input_is_one_clear_line_and_exit_2(
    tmp_path: Path,
    folder: Path,
    vertex_server: FakeVertex,
    oauth_server: FakeOAuth,
    flags: list[str],
    needle: str,
    env: dict[str, str],
) -> None:
    done = await caliban(["cloud", "--image_tag", IMAGE, *flags, "job.py"], cwd=folder, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert oauth_server.token_requests == 0
    assert all(v == 0 for v in vertex_server.counters().values())
    assert not (tmp_path / "home").exists()


async def test_bad_credentials_are_one_clear_line_and_exit_1(
    tmp_path: Path, folder: Path, vertex_server: FakeVertex, oauth_server: FakeOAuth
) -> None:
    info, _ = make_service_account(oauth_server.token_url)  # never registered with the server
    bad = write_credentials(tmp_path / "revoked.json", info)
    env = cli_env(tmp_path, bad, vertex_server)
    done = await caliban(["cloud", "--image_tag", IMAGE, "job.py"], cwd=folder, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"caliban: Google refused the credentials from key file {bad}")
    assert "invalid_grant" in lines[0]
    assert lines[1] == "check the key file, or create a new key / log in again"
    assert oauth_server.token_requests == 1
    assert vertex_server.counters()["creates_received"] == 0
    assert not (tmp_path / "home" / "caliban.db").exists()


async def test_no_credentials_at_all(
    tmp_path: Path, folder: Path, vertex_server: FakeVertex
) -> None:
    env = keyless_env(tmp_path, vertex_server)
    env["GCE_METADATA_HOST"] = "127.0.0.1:9"  # nothing answers there
    done = await caliban(
        ["cloud", "--image_tag", IMAGE, "--project_id", "test-proj", "job.py"], cwd=folder, env=env
    )
    assert done.returncode == 1
    assert done.stderr.startswith("caliban: no Google credentials found\npass --cloud_key")


async def test_metadata_server_credentials(
    tmp_path: Path, folder: Path, vertex_server: FakeVertex, oauth_server: FakeOAuth
) -> None:
    """On a Google Cloud machine: no key, no ADC file, the metadata server answers."""
    env = keyless_env(tmp_path, vertex_server)
    env["GCE_METADATA_HOST"] = oauth_server.metadata_host
    done = await caliban(
        ["cloud", "--image_tag", IMAGE, "--project_id", "test-proj", "job.py"],
        cwd=folder,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert oauth_server.metadata_requests >= 2  # the probe, then the token
    assert [t.grant for t in oauth_server.issued] == ["gce-metadata"]
    assert len(vertex_server.jobs) == 1


async def test_application_default_credentials(
    tmp_path: Path, folder: Path, vertex_server: FakeVertex, oauth_server: FakeOAuth
) -> None:
    """`gcloud auth application-default login`: an authorized_user file under HOME."""
    env = keyless_env(tmp_path, vertex_server)
    adc = tmp_path / ".config" / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    write_credentials(adc, oauth_server.add_authorized_user())
    done = await caliban(
        ["cloud", "--image_tag", IMAGE, "--project_id", "test-proj", "job.py"],
        cwd=folder,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert [t.grant for t in oauth_server.issued] == ["refresh_token"]
    assert len(vertex_server.jobs) == 1


async def _interrupt(
    folder: Path,
    env: dict[str, str],
    args: list[str],
    vertex: FakeVertex,
    sig: signal.Signals,
    after: int,
    log: Path,
) -> int:
    """Start `caliban` and send it ``sig`` once the server has created ``after`` jobs."""
    with log.open("w") as out:
        process = await anyio.open_process(
            [CALIBAN, *args], cwd=folder, env=env, stdout=out, stderr=out
        )
        async with process:
            with anyio.fail_after(60):
                while vertex.creates_accepted < after:
                    assert process.returncode is None, log.read_text()
                    await anyio.sleep(0.005)
            process.send_signal(sig)
            with anyio.fail_after(60):
                return await process.wait()


def _fan_out_args(folder: Path, n: int, *, xgroup: str, max_inflight: int) -> list[str]:
    """A sweep of ``n`` jobs, paced fast enough to be interrupted half way."""
    return [
        "cloud",
        "--experiment_config",
        str(_sweep(folder, n)),
        "--image_tag",
        IMAGE,
        "--xgroup",
        xgroup,
        "--rate_limit",
        "60000",
        "--max_inflight",
        str(max_inflight),
        "job.py",
    ]


@pytest.mark.parametrize("resume", ["resubmit", "same-command"])
async def test_kill_9_mid_fan_out_then_resume_gives_exactly_n_jobs(
    tmp_path: Path, folder: Path, vertex_server: FakeVertex, env: dict[str, str], resume: str
) -> None:
    n = 200
    vertex_server.create_latency = 0.03
    vertex_server.lost_response_rate = 0.03
    cloud = _fan_out_args(folder, n, xgroup="killed", max_inflight=6)
    code = await _interrupt(
        folder, env, cloud, vertex_server, signal.SIGKILL, 60, tmp_path / "killed.log"
    )
    assert code == -signal.SIGKILL
    await anyio.sleep(0.1)  # creates still in flight at the server land
    rows = db_jobs(tmp_path / "home", "killed")
    assert len(rows) == n  # every job was recorded before its request
    planned = sum(state == "PLANNED" for _, state, _ in rows)
    created = len(vertex_server.jobs)
    assert 60 <= created < n and planned > n - created  # some were created but not recorded

    if resume == "resubmit":
        done = await caliban(["resubmit", "--xgroup", "killed", "--yes"], cwd=folder, env=env)
    else:
        done = await caliban(cloud, cwd=folder, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_server_matches_store(vertex_server, tmp_path / "home", "killed", n)


async def test_ctrl_c_mid_fan_out_exits_130_and_the_rerun_completes(
    tmp_path: Path, folder: Path, vertex_server: FakeVertex, env: dict[str, str]
) -> None:
    n = 120
    vertex_server.create_latency = 0.03
    cloud = _fan_out_args(folder, n, xgroup="ctrlc", max_inflight=4)
    log = tmp_path / "ctrlc.log"
    code = await _interrupt(folder, env, cloud, vertex_server, signal.SIGINT, 30, log)
    assert code == 130, log.read_text()
    assert "stopping" in log.read_text() and "Traceback" not in log.read_text()
    await anyio.sleep(0.1)
    assert len(vertex_server.jobs) < n
    done = await caliban(cloud, cwd=folder, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already done or running" in done.stdout
    _assert_server_matches_store(vertex_server, tmp_path / "home", "ctrlc", n)


async def test_resubmit_via_the_cli_sends_failed_jobs_again(
    folder: Path, vertex_server: FakeVertex, env: dict[str, str]
) -> None:
    done = await caliban(
        [
            "cloud",
            "--experiment_config",
            str(_sweep(folder, 3)),
            "--image_tag",
            IMAGE,
            "--xgroup",
            "again",
            "job.py",
        ],
        cwd=folder,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    vertex_server.fail(vertex_server.jobs[1].name)
    dry = await caliban(["resubmit", "--xgroup", "again", "--dry_run"], cwd=folder, env=env)
    assert "dry run: 1 job(s) would be resubmitted" in dry.stdout
    assert len(vertex_server.jobs) == 3
    again = await caliban(["resubmit", "--xgroup", "again", "--yes"], cwd=folder, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 job(s): 1 submitted" in again.stdout
    assert len(vertex_server.jobs) == 4 and vertex_server.duplicates(JOB_LABEL) == {}
    nothing = await caliban(["resubmit", "--xgroup", "again", "--yes"], cwd=folder, env=env)
    assert "nothing to resubmit in again" in nothing.stdout
