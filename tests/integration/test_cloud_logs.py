"""`caliban logs` of Vertex jobs through Cloud Logging, against the local Vertex, Logging and
OAuth stand-ins: one job, -f until it ends, many jobs in one query, 429 paced, 403 one line."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from caliban.errors import AuthError
from caliban.platforms.vertex import cloudlog
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from tests.conftest import MakeProject
from tests.fakes.cloudlogging import FakeLogging
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import IMAGE, JOB_LABEL, caliban, cli_env, cloud_request


@pytest.fixture
def env(tmp_path: Path, logging_server: FakeLogging) -> dict[str, str]:
    return {
        "CALIBAN_HOME": str(tmp_path / "home"),
        "HOME": str(tmp_path),
        cloudlog.ENDPOINT_ENV: logging_server.url,
    }


async def _sweep(
    s: Session, folder: Path, key: Path, vertex: FakeVertex, n: int, xgroup: str = "logs"
) -> list[JobRecord]:
    result = await s.cloud(
        cloud_request(folder, key, vertex, experiments={"i": list(range(n))}, xgroup=xgroup)
    )
    assert result.ok
    return result.jobs


def _remote(vertex: FakeVertex, job: JobRecord) -> str:
    (found,) = vertex.jobs_with_label(JOB_LABEL, job.job_id)
    return found.name


async def _read(s: Session, job: JobRecord, follow: bool = False) -> str:
    return "".join([chunk async for chunk in s.logs(job.job_id, follow=follow)])


async def test_a_job_s_logs_follow_every_page(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    logging_server: FakeLogging,
    env: dict[str, str],
) -> None:
    logging_server.entries_per_job = 7
    logging_server.max_page_size = 3  # 7 entries: three pages
    async with Session(home=tmp_path / "home", environ=env) as s:
        # The second job logs too: its lines must not show.
        (job, _other) = await _sweep(s, make_project(), service_account_file, vertex_server, 2)
        numeric = _remote(vertex_server, job).rsplit("/", 1)[-1]
        text = await _read(s, job)
    assert text.splitlines() == [f"line {i} of job {numeric}" for i in range(7)]
    assert len(logging_server.accepted) == 3
    body = logging_server.accepted[0].body
    assert body["resourceNames"] == ["projects/test-proj"]
    assert body["filter"] == f'resource.type="ml_job" AND resource.labels.job_id="{numeric}"'
    assert [c.body.get("pageToken") is None for c in logging_server.accepted] == [
        True,
        False,
        False,
    ]


async def test_follow_prints_new_entries_and_stops_once_the_job_has_ended(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    logging_server: FakeLogging,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cloudlog, "FOLLOW_POLL", 0.05)
    async with Session(home=tmp_path / "home", environ=env) as s:
        (job,) = await _sweep(s, make_project(), service_account_file, vertex_server, 1)
        remote = vertex_server.job(_remote(vertex_server, job))
        vertex_server.advance(remote.name, "JOB_STATE_RUNNING")
        logging_server.add(remote, "epoch 1", "epoch 2")
        seen: list[str] = []

        async def follow() -> None:
            async for chunk in s.logs(job.job_id, follow=True):
                seen.extend(chunk.splitlines())
                if seen == ["epoch 1", "epoch 2"]:
                    logging_server.add(remote, "epoch 3")
                elif seen[-1:] == ["epoch 3"]:
                    # Ends while the follower waits; its last line comes after.
                    vertex_server.advance(remote.name, "JOB_STATE_SUCCEEDED")
                    logging_server.add(remote, "done: accuracy 0.97")

        with anyio.fail_after(30):
            await follow()
    assert seen == ["epoch 1", "epoch 2", "epoch 3", "done: accuracy 0.97"]
    # Polls ask only for what is new.
    assert all("timestamp>=" in c.body["filter"] for c in logging_server.accepted[1:])


async def test_failed_jobs_of_a_sweep_are_read_with_one_query(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    logging_server: FakeLogging,
    env: dict[str, str],
) -> None:
    logging_server.entries_per_job = 30
    async with Session(home=tmp_path / "home", environ=env) as s:
        jobs = await _sweep(s, make_project(), service_account_file, vertex_server, 12)
        failing = {j.job_id for j in jobs if j.index % 3 == 0}
        for job in jobs:
            remote = vertex_server.job(_remote(vertex_server, job))
            if job.job_id in failing:
                logging_server.add(remote, "Traceback (most recent call last):")
                logging_server.add(remote, '  File "job.py", line 3, in <module>')
                logging_server.add(remote, f"ValueError: bad lr {job.index}")
                vertex_server.fail(remote.name, 3, "The replica exited with status 1.")
            else:
                vertex_server.advance(remote.name, "JOB_STATE_SUCCEEDED")
        before = len(logging_server.calls)
        found = await s.failed_logs("logs", lines=5)
    assert [f.job.job_id for f in found] == [j.job_id for j in jobs if j.job_id in failing]
    assert len(logging_server.calls) - before == 1
    (call,) = logging_server.calls[before:]
    assert call.body["filter"].count(" OR ") == len(failing) - 1
    for block in found:
        assert block.job.state is JobState.FAILED
        assert block.lines[-1] == f"ValueError: bad lr {block.job.index}"
        assert len(block.lines) == 5
        assert block.cause is not None and block.cause.text == "ValueError"


async def test_a_429_pauses_the_reader_for_its_retry_after(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    logging_server: FakeLogging,
    env: dict[str, str],
) -> None:
    logging_server.entries_per_job = 2
    async with Session(home=tmp_path / "home", environ=env) as s:
        (job,) = await _sweep(s, make_project(), service_account_file, vertex_server, 1)
        logging_server.fail_next(1, 429, retry_after=1.0)
        text = await _read(s, job)
    assert len(text.splitlines()) == 2
    refused, accepted = logging_server.calls
    assert (refused.status, accepted.status) == (429, 200)
    # Retry-After is a floor: the retry never comes sooner.
    assert accepted.at - refused.at >= 1.0


async def test_a_missing_permission_is_one_line_naming_the_role(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    logging_server: FakeLogging,
    env: dict[str, str],
) -> None:
    async with Session(home=tmp_path / "home", environ=env) as s:
        (job,) = await _sweep(s, make_project(), service_account_file, vertex_server, 1)
        logging_server.deny("test-proj")
        with pytest.raises(AuthError) as caught:
            await _read(s, job)
    assert len(logging_server.calls) == 1  # a 403 is not retried
    assert "roles/logging.viewer" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_the_cli_prints_a_job_s_logs_follows_an_ended_one_and_a_sweep_s_failures(
    tmp_path: Path,
    make_project: MakeProject,
    service_account_file: Path,
    vertex_server: FakeVertex,
    logging_server: FakeLogging,
) -> None:
    folder = make_project()
    env = cli_env(tmp_path, service_account_file, vertex_server)
    env[cloudlog.ENDPOINT_ENV] = logging_server.url
    (folder / "sweep.json").write_text('{"lr": [0.1, 0.2, 0.3]}')
    args = ["cloud", "--experiment_config", "sweep.json", "--image_tag", IMAGE, "--xgroup", "cl"]
    done = await caliban([*args, "job.py"], cwd=folder, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    first, second, third = vertex_server.jobs
    logging_server.add(first, "epoch 1", "accuracy 0.95")
    vertex_server.advance(first.name, "JOB_STATE_SUCCEEDED")
    logging_server.add(second, "loading data", "Killed")
    vertex_server.fail(second.name, 9, "The replica workerpool0-0 ran out-of-memory.")
    logging_server.add(third, "Traceback (most recent call last):", "KeyError: 'lr'")
    vertex_server.fail(third.name, 3, "The replica workerpool0-0 exited with status 1.")
    short = first.labels[JOB_LABEL][-8:]

    logs = await caliban(["logs", short], cwd=folder, env=env)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "epoch 1\naccuracy 0.95\n"
    # The job has ended: -f prints what there is and returns.
    followed = await caliban(["logs", "-f", short], cwd=folder, env=env)
    assert (followed.returncode, followed.stdout) == (0, "epoch 1\naccuracy 0.95\n")

    before = len(logging_server.calls)
    failed = await caliban(
        ["logs", "--xgroup", "cl", "--failed", "--tail", "1"], cwd=folder, env=env
    )
    assert failed.returncode == 0, failed.stderr
    assert len(logging_server.calls) - before == 1
    blocks = failed.stdout.strip().split("\n\n")
    assert len(blocks) == 2, failed.stdout
    assert blocks[0].startswith("==> 2/3 ")
    assert "likely cause: killed for memory" in blocks[0].splitlines()[0]
    assert blocks[0].splitlines()[1:] == ["Killed"]
    assert blocks[1].startswith("==> 3/3 ")
    assert blocks[1].splitlines()[0].endswith("likely cause: KeyError")
    assert blocks[1].splitlines()[1:] == ["KeyError: 'lr'"]

    logging_server.deny("test-proj")
    denied = await caliban(["logs", short], cwd=folder, env=env)
    assert denied.returncode == 1
    assert denied.stdout == ""
    (line,) = denied.stderr.strip().splitlines()
    assert "roles/logging.viewer" in line


async def test_bad_logs_flags_exit_2(tmp_path: Path, make_project: MakeProject) -> None:
    env = {"CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path), "PATH": "/usr/bin"}
    folder = make_project()
    for args, words in (
        (["logs"], "needs a job id"),
        (["logs", "--failed"], "--failed needs --xgroup"),
        (["logs", "abc", "--tail", "3"], "go with --failed"),
        (["logs", "--xgroup", "x", "--failed", "-f"], "no --follow"),
    ):
        done = await caliban(args, cwd=folder, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
