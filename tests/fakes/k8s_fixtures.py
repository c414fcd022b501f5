"""pytest fixtures and manifest helpers for the fake Kubernetes and GKE servers.

Import the fixtures into a ``conftest.py`` (or bind them in a test module) to use them::

    from .k8s_fixtures import (  # noqa: F401
        fake_gke, fake_k8s, fake_k8s_tls, k8s_api, k8s_kubeconfig,
    )

Every fixture closes what it opens (servers, ApiClients). Note that pyproject's filters ignore
ResourceWarning, so a leaked aiohttp session would go unnoticed rather than fail a test: run
with ``-X dev -W always::ResourceWarning`` to check.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from .gke import FakeGke
from .k8s import FakeKubernetes

K8S_TOKEN = "fake-k8s-token"
GKE_TOKEN = "ya29.fake-gke-token"


def make_job(
    name: str | None = "job-1",
    *,
    labels: dict[str, str] | None = None,
    generate_name: str | None = None,
    image: str = "us-docker.pkg.dev/test-proj/repo/img:latest",
    args: list[str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A valid batch/v1 Job manifest (plain dict), like the GKE manifest in apis.md §5.

    ``spec`` keys override/extend the Job spec (``parallelism=2``,
    ``completionMode="Indexed"``, ``completions=3``, ...). Labels go on the Job and its pod
    template, as production code does so pods can be found by the same selector.
    """
    meta: dict[str, Any] = {"labels": dict(labels or {})}
    if name is not None:
        meta["name"] = name
    if generate_name is not None:
        meta["generateName"] = generate_name
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": dict(labels or {})},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": image, "args": list(args or [])}],
            },
        },
    }
    job_spec.update(copy.deepcopy(spec))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def batch_api(api: ApiClient) -> Any:
    """``BatchV1Api`` typed as Any: its stubs want models, tests pass plain dicts too."""
    return client.BatchV1Api(api)


def core_api(api: ApiClient) -> Any:
    return client.CoreV1Api(api)


def error_body(err: ApiException) -> dict[str, Any]:
    """The Status object of an ApiException (kubernetes_asyncio keeps it as raw text)."""
    return dict(json.loads(err.body or b"{}"))


@pytest.fixture
async def fake_k8s() -> AsyncIterator[FakeKubernetes]:
    """A plain-HTTP fake apiserver expecting ``Bearer fake-k8s-token``."""
    async with FakeKubernetes(token=K8S_TOKEN, seed=0) as kube:
        yield kube


@pytest.fixture
async def fake_k8s_tls() -> AsyncIterator[FakeKubernetes]:
    """The same with an HTTPS listener too (``https_url``, ``ca_cert_pem``)."""
    async with FakeKubernetes(token=K8S_TOKEN, seed=0, tls=True) as kube:
        yield kube


@pytest.fixture
def k8s_kubeconfig(fake_k8s: FakeKubernetes, tmp_path: Path) -> Path:
    """A kubeconfig file for :func:`fake_k8s` (namespace ``default``)."""
    return fake_k8s.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def k8s_api(fake_k8s: FakeKubernetes) -> AsyncIterator[ApiClient]:
    """A real kubernetes_asyncio ApiClient connected to :func:`fake_k8s`, closed afterwards."""
    api = await config.new_client_from_config_dict(fake_k8s.kubeconfig_dict())
    async with api:
        yield api


@pytest.fixture
async def fake_gke(fake_k8s_tls: FakeKubernetes) -> AsyncIterator[FakeGke]:
    """A fake GKE API whose clusters' endpoint/CA point at :func:`fake_k8s_tls`."""
    async with FakeGke(token=GKE_TOKEN, kubernetes=fake_k8s_tls) as gke:
        yield gke
