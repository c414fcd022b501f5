"""The conformance case of the local platform, on the real Docker engine.

A local launch waits for its jobs to end, so the case launches the way a user
who closes the terminal does: the real ``caliban run`` (or ``caliban
resubmit``), killed with SIGKILL once every container runs. The containers
outlive it, no live run holds their jobs, and everything the suite does next
(status, stop, resubmit) goes through the Session as for a remote platform.

Each job runs ``gate.py``, which waits for its verdict (an exit code) in a
bind-mounted folder: :meth:`finish` writes it and waits for the container to
exit. What reached the engine is read from the engine itself (its ``create``
events for this store), and refresh's list calls from the Docker client of this
process (``GET /containers/json``, through aiodocker or the standard library).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import pytest

from caliban.adapters import enginequick
from caliban.cli import inputs
from caliban.options import ProjectOptions, RunRequest
from caliban.platforms.local.containers import container_name
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from caliban.spec import Platform as Kind
from caliban.sweep import engine
from tests.conftest import CALIBAN, DOCKER, docker_cli

GATE_PY = """\
import os, pathlib, sys, time
verdict = pathlib.Path("/verdicts") / os.environ["CALIBAN_JOB_ID"]
while not verdict.exists():
    time.sleep(0.05)
sys.exit(int(verdict.read_text()))
"""


@dataclass(frozen=True)
class LocalSweep:
    project: ProjectOptions
    experiments: object
    xgroup: str


def _db(home: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(home / "caliban.db")) as db:
        return list(db.execute(sql, args).fetchall())


def _store_id(home: Path) -> str | None:
    """This history's id; None until the first process to open it has made it."""
    if not (home / "caliban.db").exists():  # sqlite3.connect would make an empty one
        return None
    try:
        rows = _db(home, "SELECT value FROM meta WHERE key='store_id'")
    except sqlite3.Error:
        return None
    return str(rows[0][0]) if rows else None


def _jobs(home: Path, xgroup: str) -> dict[str, str]:
    rows = _db(
        home,
        "SELECT j.id, j.state FROM jobs j JOIN experiments e ON e.id = j.experiment_id "
        "JOIN xgroups x ON x.id = e.xgroup_id WHERE x.name = ?",
        xgroup,
    )
    return {str(r[0]): str(r[1]) for r in rows}


async def _docker(*args: str) -> str:
    """The daemon's own client, without blocking the loop."""
    done = await anyio.run_process([DOCKER, *args], check=False)
    return done.stdout.decode()


async def _running_containers(store: str) -> set[str]:
    out = await _docker(
        "ps", "--filter", f"label=caliban.store={store}", "--filter", "status=running",
        "--format", '{{.Label "caliban.job"}}',
    )  # fmt: skip
    return set(out.split())


@asynccontextmanager
async def local_case(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    from tests.conformance.conftest import PlatformCase

    env: dict[str, str] = request.getfixturevalue("env")  # skips (fails in CI) without an engine
    home: Path = request.getfixturevalue("home")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    verdicts = tmp_path / "verdicts"
    verdicts.mkdir(mode=0o755)
    mount = f"-v {verdicts}:/verdicts"
    lose: set[int] = set()
    lost: list[str] = []  # job ids whose container the "crashed" run made
    lists: Counter[str] = Counter()
    since = time.time() - 1

    # Refresh's calls to the engine, seen at the Docker client's one request method.
    query = aiodocker.Docker._do_query

    async def observed(self: aiodocker.Docker, path: Any, method: str, **kw: Any) -> Any:
        if method == "GET" and str(path).rstrip("/").endswith("containers/json"):
            lists["engine"] += 1
        return await query(self, path, method, **kw)

    monkeypatch.setattr(aiodocker.Docker, "_do_query", observed)

    # And at the standard-library client's, which status and stop use when no
    # aiodocker connection is open.
    call = enginequick.call

    async def observed_quick(path: str, method: str, where: str, body: Any = None) -> Any:
        if method == "GET" and where.split("?")[0].rstrip("/").endswith("containers/json"):
            lists["engine"] += 1
        return await call(path, method, where, body)

    monkeypatch.setattr(enginequick, "call", observed_quick)

    @asynccontextmanager
    async def session() -> AsyncIterator[Session]:
        async with Session(home=home, environ=env) as s:
            yield s

    def sweep(project: ProjectOptions, experiments: object, xgroup: str) -> object:
        (project.folder / "gate.py").write_text(GATE_PY)
        (project.folder / ".calibanconfig.json").write_text(json.dumps({"default_mode": "cpu"}))
        return LocalSweep(project, experiments, xgroup)

    async def detached(args: Sequence[str], cwd: Path, xgroup: str, before: set[str]) -> None:
        """Run the CLI until the jobs it launches all run, then kill it (SIGKILL)."""
        proc = await anyio.open_process([CALIBAN, *args], cwd=cwd, env=env)
        try:
            with anyio.fail_after(240):
                while True:
                    await anyio.sleep(0.2)
                    if proc.returncode is not None:
                        raise AssertionError(f"caliban {args[0]} ended ({proc.returncode})")
                    store = _store_id(home)
                    if store is None:
                        continue
                    recorded = _jobs(home, xgroup)
                    jobs = {j: s for j, s in recorded.items() if j not in before}
                    if jobs and all(s == "PLANNED" for s in jobs.values()):
                        continue
                    ours = {j for j, s in jobs.items() if s not in ("SUCCEEDED", "FAILED")}
                    running = await _running_containers(store) if ours else set()
                    if ours and ours <= running and all(jobs[j] == "RUNNING" for j in ours):
                        return
        finally:
            proc.kill()
            await proc.wait()

    async def crash_after_planning(s: Session, req: LocalSweep) -> None:
        """An earlier run that recorded the jobs, created the container of each
        job of ``lose`` and died before recording that it did."""

        async def crashed(host: Any, platform: Any, planned: Any, *a: Any, **kw: Any) -> Any:
            docker = await s.docker()
            for p in planned:
                if p.job.index in lose:
                    await docker.containers.create(p.job.spec, name=container_name(p.job.job_id))
                    lost.append(p.job.job_id)
            return engine.RunResult(kw["xgroup"], [p.job for p in planned])

        run = RunRequest(
            project=ProjectOptions(folder=req.project.folder, entry="gate.py"),
            experiments=req.experiments,
            xgroup=req.xgroup,
            max_parallel=16,
            docker_run_args=inputs.docker_run_args(mount),
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine, "launch", crashed)
            await engine.submit(s, Kind.LOCAL, run)

    async def launch(s: Session, req: object) -> list[JobRecord]:
        assert isinstance(req, LocalSweep)
        if lose:
            await crash_after_planning(s, req)
        config = req.project.folder.parent / f"{req.project.folder.name}-sweep.json"
        config.write_text(json.dumps(req.experiments))
        args = [
            "run", "--xgroup", req.xgroup, "--experiment_config", str(config),
            "--max_parallel", "16", f"--docker_run_args={mount}", "gate.py",
        ]  # fmt: skip
        await detached(args, req.project.folder, req.xgroup, set())
        lose.clear()
        return await s.status(xgroup=req.xgroup, refresh=False)

    async def resubmit(s: Session, xgroup: str) -> list[JobRecord]:
        before = set(_jobs(home, xgroup))
        await detached(["resubmit", "--xgroup", xgroup, "--yes"], tmp_path, xgroup, before)
        return [j for j in await s.status(xgroup=xgroup, refresh=False) if j.job_id not in before]

    async def finish(job: JobRecord, state: JobState) -> None:
        verdict = verdicts / job.job_id
        verdict.with_suffix(".tmp").write_text("0" if state is JobState.SUCCEEDED else "3")
        verdict.with_suffix(".tmp").rename(verdict)
        await _docker("wait", container_name(job.job_id))

    def created() -> Counter[str]:
        store = _store_id(home)
        if store is None:
            return Counter()
        out = docker_cli(
            "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
            "--filter", "type=container", "--filter", "event=create",
            "--filter", f"label=caliban.store={store}",
            "--format", '{{index .Actor.Attributes "caliban.job"}}',
        )  # fmt: skip
        return Counter(out.split())

    try:
        yield PlatformCase(
            kind=Kind.LOCAL,
            session=session,
            request=sweep,
            # One engine: a refresh asks it once, however many jobs.
            targets=1,
            finish=finish,
            lose_answer=lose.add,
            refuse_once=lambda index: None,  # never asked: not in RETRYING_CREATES
            # A create the engine refuses is not sent again: the engine is on this
            # machine, so a refusal (no such image, a bad mount, a name taken) is
            # not overload; that job fails and `caliban resubmit` runs it again
            # (tests/integration/test_claims.py: a failed create fails that job only).
            lost=lambda: len(lost),
            # A create the engine refuses leaves no event, so creates are those it made.
            creates=created,
            made=created,
            lists=lambda: Counter(lists),
            start=launch,
            resubmit=resubmit,
        )
    finally:
        store = _store_id(home)
        if store is not None:
            ids = (await _docker("ps", "-aq", "--filter", f"label=caliban.store={store}")).split()
            if ids:
                await _docker("rm", "-f", *ids)
