"""The conformance cases of the remote platforms, each against its local fake
server (tests/fakes) through the production code path, unchanged.

What a case must see that the fakes do not count per caliban job (creates per
job id, list calls per target) is read by a middleware in front of the fake's
own handlers, which also arms the fake's own one-shot fault knobs for the job
the suite names by index, so the client meets the fake's real wire-format
answers (a google.rpc.Status 503, a Kubernetes Status 503, a connection closed
after the job was stored).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from caliban.limits import RetryPolicy
from caliban.options import ClusterJobRequest, ProjectOptions
from caliban.platforms.vertex import plan as vertexplan
from caliban.platforms.vertex import spec as vertexspec
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from caliban.spec import Platform as Kind
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.k8s_fixtures import K8S_TOKEN
from tests.fakes.oauth import FakeOAuth, write_credentials
from tests.fakes.vertex import FakeVertex
from tests.integration import cloud_helpers, cluster_support

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REGIONS = ("us-central1", "europe-west4")


def index_of(home: Path, job_id: str) -> int:
    """The experiment index of a recorded job: every job is recorded before it
    is sent, so a create names a job the store already has."""
    with contextlib.closing(sqlite3.connect(home / "caliban.db")) as db:
        row = db.execute(
            "SELECT e.idx FROM jobs j JOIN experiments e ON e.id = j.experiment_id WHERE j.id = ?",
            (job_id,),
        ).fetchone()
    assert row is not None, f"a create for {job_id}, which the store has never recorded"
    return int(row[0])


@dataclass
class Observer:
    """Counts creates per caliban job id and lists per target; arms faults by index."""

    home: Path
    #: The caliban job id a create body carries, or None for another request.
    job_of: Callable[[web.Request, Any], str | None]
    #: The target (region, namespace) a list request asks about, or None.
    listed: Callable[[web.Request], str | None]
    arm_lost: Callable[[], None]
    arm_refused: Callable[[], None]
    creates: Counter[str] = field(default_factory=Counter)
    lists: Counter[str] = field(default_factory=Counter)
    lose: set[int] = field(default_factory=set)
    refuse: set[int] = field(default_factory=set)
    # Creates pass one at a time, so a fault armed for one job's create is
    # consumed by that create and not by another one in flight.
    _one_create: anyio.Lock = field(default_factory=anyio.Lock)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            raw = await request.read()  # kept by aiohttp: the fake reads it again
            job_id = self.job_of(request, json.loads(raw or b"null"))
            if job_id is not None:
                async with self._one_create:
                    self.creates[job_id] += 1
                    index = index_of(self.home, job_id)
                    if index in self.lose:
                        self.lose.discard(index)
                        self.arm_lost()
                    elif index in self.refuse:
                        self.refuse.discard(index)
                        self.arm_refused()
                    return await handler(request)
        elif request.method == "GET" and "watch" not in request.query:
            target = self.listed(request)
            if target is not None:
                self.lists[target] += 1
        return await handler(request)


def _environ(tmp_path: Path) -> dict[str, str]:
    # Nothing from the real user: no ADC, no kubeconfig, no config file.
    return {
        "CALIBAN_HOME": str(tmp_path / "caliban-home"),
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
    }


# -- Vertex AI ------------------------------------------------------------------------------


class ObservedVertex(FakeVertex):
    """The Vertex fake with an :class:`Observer` in front (set before it starts)."""

    observer: Observer

    def build_app(self) -> web.Application:
        app = super().build_app()
        app.middlewares.append(self.observer.middleware)
        return app


def _vertex_job(request: web.Request, body: Any) -> str | None:
    if not request.path.endswith("/customJobs") or not isinstance(body, dict):
        return None
    return str((body.get("labels") or {}).get(vertexspec.JOB_ID_LABEL)) or None


def _vertex_listed(request: web.Request) -> str | None:
    return request.match_info.get("location") if request.path.endswith("/customJobs") else None


@asynccontextmanager
async def vertex_case(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    from tests.conformance.conftest import PlatformCase

    tmp_path: Path = request.getfixturevalue("tmp_path")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    # The production policy, with backoff in tens of milliseconds (as test_cloud_faults).
    monkeypatch.setattr(
        vertexplan, "RETRY_POLICY", RetryPolicy(attempts=8, initial=0.02, max_delay=0.5)
    )
    env = _environ(tmp_path)
    home = Path(env["CALIBAN_HOME"])
    async with FakeOAuth() as oauth:
        vertex = ObservedVertex(token_validator=oauth.valid_token)
        observer = vertex.observer = Observer(
            home,
            _vertex_job,
            _vertex_listed,
            arm_lost=lambda: vertex.lose_next_creates(1),
            arm_refused=lambda: vertex.fail_next_creates(1, 503),
        )
        async with vertex:
            key = write_credentials(tmp_path / "sa.json", oauth.add_service_account()[0])

            @asynccontextmanager
            async def session() -> AsyncIterator[Session]:
                async with Session(home=home, environ=env) as s:
                    yield s

            def sweep(project: ProjectOptions, experiments: object, xgroup: str) -> object:
                return cloud_helpers.cloud_request(
                    project.folder,
                    key,
                    vertex,
                    project=project,
                    experiments=experiments,
                    xgroup=xgroup,
                    regions=REGIONS,
                )

            def finish(job: JobRecord, state: JobState) -> None:
                name = str(job.platform_id)
                if state is JobState.SUCCEEDED:
                    vertex.advance(name, "JOB_STATE_SUCCEEDED")
                else:
                    vertex.fail(name)

            yield PlatformCase(
                kind=Kind.VERTEX,
                session=session,
                request=sweep,
                targets=len(REGIONS),
                finish=finish,
                lose_answer=observer.lose.add,
                refuse_once=observer.refuse.add,
                lost=lambda: vertex.lost_responses,
                creates=lambda: Counter(observer.creates),
                made=lambda: Counter(
                    j.labels[cloud_helpers.JOB_LABEL] for j in vertex.jobs if not j.deleted
                ),
                lists=lambda: Counter(observer.lists),
            )


# -- Kubernetes -----------------------------------------------------------------------------

_K8S_JOBS = "/apis/batch/v1/namespaces/"


def _k8s_job(request: web.Request, body: Any) -> str | None:
    if not (request.path.startswith(_K8S_JOBS) and request.path.endswith("/jobs")):
        return None
    if not isinstance(body, dict):
        return None
    labels = (body.get("metadata") or {}).get("labels") or {}
    return str(labels.get(cluster_support.JOB_LABEL)) or None


def _k8s_listed(request: web.Request) -> str | None:
    path = request.path
    if path.startswith(_K8S_JOBS) and path.endswith("/jobs"):
        return path.removeprefix(_K8S_JOBS).split("/")[0]
    return "(all namespaces)" if path == "/apis/batch/v1/jobs" else None


@asynccontextmanager
async def kubernetes_case(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    from tests.conformance.conftest import PlatformCase

    tmp_path: Path = request.getfixturevalue("tmp_path")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    env = _environ(tmp_path)
    home = Path(env["CALIBAN_HOME"])
    kube = FakeKubernetes(token=K8S_TOKEN, seed=0)
    observer = Observer(
        home,
        _k8s_job,
        _k8s_listed,
        arm_lost=lambda: kube.lose_next_response(1),
        arm_refused=lambda: kube.fail_next(
            1, 503, path_prefix="/apis/batch/v1", method="POST", retry_after=0.05
        ),
    )
    build = kube._api.build_app

    def observed_app() -> web.Application:
        app = build()
        # Outermost: it arms a one-shot fault before the fake's own guard reads them.
        app.middlewares.insert(0, observer.middleware)
        return app

    monkeypatch.setattr(kube._api, "build_app", observed_app)
    async with kube:
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")

        @asynccontextmanager
        async def session() -> AsyncIterator[Session]:
            async with Session(home=home, environ=env) as s:
                yield s

        def sweep(project: ProjectOptions, experiments: object, xgroup: str) -> object:
            req: ClusterJobRequest = cluster_support.request(
                project.folder,
                kubeconfig,
                project=project,
                experiments=experiments,
                xgroup=xgroup,
            )
            return req

        def finish(job: JobRecord, state: JobState) -> None:
            name = str(job.platform_id)
            if state is JobState.SUCCEEDED:
                kube.succeed_job("default", name)
            else:
                kube.fail_job("default", name)

        def made() -> Counter[str]:
            return Counter(
                str(j["metadata"]["labels"][cluster_support.JOB_LABEL]) for j in kube.created_jobs
            )

        yield PlatformCase(
            kind=Kind.GKE,
            session=session,
            request=sweep,
            # One sweep goes to one cluster and namespace.
            targets=1,
            finish=finish,
            lose_answer=observer.lose.add,
            refuse_once=observer.refuse.add,
            # A create stored, then its connection dropped: recorded with no status.
            lost=lambda: sum(1 for r in kube.requests if r.method == "POST" and r.status is None),
            creates=lambda: Counter(observer.creates),
            made=made,
            lists=lambda: Counter(observer.lists),
        )
