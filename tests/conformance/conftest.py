"""``platform_case``: one platform under test, with what the conformance suite
needs to drive it and to see what reached it.

Five cases: the in-memory platform (memory.py), the local platform on the real
Docker engine (local.py), Slurm on the real one-node cluster of
scripts/slurm-cluster.sh (slurm.py), and Vertex AI and Kubernetes against their
local fake servers (remote.py), each opening a Session whose
registry maps the kind to the real platform, and reading the counters from what
that server saw. Each case is an async context manager, so a fake server lives
exactly as long as the test that uses it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from caliban.options import ProjectOptions
from caliban.platforms import base
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from caliban.spec import Platform as Kind
from tests.conformance import local, memory, remote, slurm
from tests.integration.slurm_support import slurm_cluster  # noqa: F401  (fixture)


@dataclass(frozen=True)
class PlatformCase:
    """How the suite drives one platform."""

    #: The kind the session's registry maps to the platform under test.
    kind: Kind
    #: A session whose registry maps ``kind`` to the platform under test.
    session: Callable[[], AbstractAsyncContextManager[Session]]
    #: A sweep request for ``project`` with ``experiments``, in ``xgroup``.
    request: Callable[[ProjectOptions, object, str], object]
    #: How many targets (regions, clusters...) a sweep of 2+ jobs is spread over.
    targets: int
    #: Make a launched job end on the platform with SUCCEEDED or FAILED (by the
    #: time it returns or its awaitable is done, the platform says so).
    finish: Callable[[JobRecord, JobState], Awaitable[None] | None]
    #: The next create of the job with this index makes the job, its answer is lost.
    lose_answer: Callable[[int], None]
    #: The next create of the job with this index is refused, retryably.
    refuse_once: Callable[[int], None]
    #: Creates the platform carried out without its answer reaching caliban.
    lost: Callable[[], int]
    #: Create requests that reached the platform, per caliban job id.
    creates: Callable[[], Counter[str]]
    #: Jobs that exist on the platform, per caliban job id.
    made: Callable[[], Counter[str]]
    #: List (refresh/lookup) calls the platform answered, per target.
    lists: Callable[[], Counter[str]]
    #: Launch a request; its jobs once the platform runs them. None: the engine's
    #: submit, which for a remote platform returns once every job is accepted.
    start: Callable[[Session, object], Awaitable[list[JobRecord]]] | None = None
    #: Resubmit a group; the jobs launched. None: the Session's resubmit.
    resubmit: Callable[[Session, str], Awaitable[list[JobRecord]]] | None = None
    #: Why a create the platform refused is not sent again (None: it is, once
    #: the refusal is retryable). A platform that says so fails that job instead.


def _environ(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBAN_")}
    # The developer's own ~/.config/caliban/config.json must not change the tests.
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    return env


@asynccontextmanager
async def _memory(request: pytest.FixtureRequest) -> AsyncIterator[PlatformCase]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    cloud = memory.Cloud()
    kind = Kind.VERTEX  # the kind it answers for in this session's registry
    monkeypatch.setattr(memory, "Installed", memory.bound(cloud, kind), raising=False)
    monkeypatch.setitem(base._REGISTRY, kind, "tests.conformance.memory:Installed")
    env = _environ(tmp_path)

    @asynccontextmanager
    async def session() -> AsyncIterator[Session]:
        async with Session(home=tmp_path / "caliban-home", environ=env) as s:
            yield s

    def sweep(project: ProjectOptions, experiments: object, xgroup: str) -> object:
        return memory.MemoryRequest(project=project, experiments=experiments, xgroup=xgroup)

    def made() -> Counter[str]:
        return Counter(remote.job_id for remote in cloud.jobs)

    yield PlatformCase(
        kind=kind,
        session=session,
        request=sweep,
        targets=len(memory.MemoryRequest.targets),
        finish=lambda job, state: cloud.finish(job.job_id, state),
        lose_answer=cloud.lose_answer.add,
        refuse_once=cloud.refuse_once.add,
        lost=lambda: cloud.lost,
        creates=lambda: Counter(cloud.creates),
        made=made,
        lists=lambda: Counter(cloud.lists),
    )


Case = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[PlatformCase]]
CASES: dict[str, Case] = {
    "memory": _memory,
    "local": local.local_case,
    "vertex": remote.vertex_case,
    "kubernetes": remote.kubernetes_case,
    "slurm": slurm.slurm_case,
}
# Cases that need more than this process: a skip of these is a failure in CI.
MARKS: dict[str, tuple[pytest.MarkDecorator, ...]] = {
    "local": (pytest.mark.docker,),
    "slurm": (pytest.mark.docker, pytest.mark.slurm),
}


# Platforms whose create can be refused transiently and is then sent again. The
# local engine's refusals are not transient: the job fails, and the sweep goes on
# (tests/integration/test_claims.py::test_a_failed_create_fails_that_job_only).
RETRYING_CREATES = ("kubernetes", "memory", "vertex")


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, ())) for name in sorted(CASES)])
async def platform_case(request: pytest.FixtureRequest) -> AsyncIterator[PlatformCase]:
    async with CASES[request.param](request) as case:
        yield case


@pytest.fixture
def project(tmp_path: Path) -> ProjectOptions:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text("print('hello')\n")
    return ProjectOptions(folder=folder, entry="train.py", use_gpu=False)
