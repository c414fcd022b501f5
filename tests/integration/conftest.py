"""Fixtures shared by the integration tests: the local Google and Kubernetes fakes, the
private environments a Session sees next to them, and Sessions opened on those.

Registered here once so each test module asks for them by name instead of importing them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from caliban.options import CloudRequest, ClusterJobRequest
from caliban.session import Session
from tests.conftest import MakeProject
from tests.fakes.fixtures import (  # noqa: F401  (imported so pytest registers them here)
    authorized_user_file,
    federation,
    logging_server,
    oauth_server,
    service_account,
    service_account_file,
    vertex_server,
)
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.k8s_fixtures import K8S_TOKEN
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import cloud_request
from tests.integration.cluster_support import request

OpenSession = Callable[[], Session]
VertexRequest = Callable[..., CloudRequest]
KubeRequest = Callable[..., ClusterJobRequest]


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubernetes]:
    async with FakeKubernetes(token=K8S_TOKEN, seed=0) as server:
        yield server


@pytest.fixture
def kubeconfig(kube: FakeKubernetes, tmp_path: Path) -> Path:
    return kube.kubeconfig(tmp_path / "kubeconfig")


def _private_env(tmp_path: Path) -> dict[str, str]:
    return {"CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}


@pytest.fixture
def cenv(tmp_path: Path) -> dict[str, str]:
    """A Session environment with a private home and no ambient credentials or kubeconfig."""
    return _private_env(tmp_path)


@pytest.fixture
def session_env(tmp_path: Path) -> dict[str, str]:
    """A Session environment with nothing from the real user (no ADC, no project)."""
    return _private_env(tmp_path)


@pytest.fixture
def cluster_session(tmp_path: Path, cenv: dict[str, str]) -> OpenSession:
    """Opens a fresh Session on the private home next to the fake cluster (``async with``),
    so a test can close one and open the next on the same store."""
    return lambda: Session(home=tmp_path / "home", environ=cenv)


@pytest.fixture
def cloud_session(tmp_path: Path, session_env: dict[str, str]) -> OpenSession:
    """Opens a fresh Session on the private home next to the Vertex fake (``async with``)."""
    return lambda: Session(home=tmp_path / "home", environ=session_env)


@pytest.fixture
def vertex_request(
    make_project: MakeProject, service_account_file: Path, vertex_server: FakeVertex
) -> VertexRequest:
    """``cloud_request`` for a new project, with the fake key and the Vertex fake's endpoint."""
    return lambda **kw: cloud_request(make_project(), service_account_file, vertex_server, **kw)


@pytest.fixture
def kube_request(make_project: MakeProject, kubeconfig: Path) -> KubeRequest:
    """``request`` for a new project on the cluster of ``kubeconfig``."""
    return lambda **kw: request(make_project(), kubeconfig, **kw)
