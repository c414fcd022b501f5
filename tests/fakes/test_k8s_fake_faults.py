"""Fault knobs, auth and TLS of the fake apiserver, seen through kubernetes_asyncio.

The point of these tests is the exact client-side symptom of each fault, since production code
has to classify them: an answered error is ``ApiException`` with a status; a dropped
connection is ``aiohttp.ServerDisconnectedError`` (FIN) or ``aiohttp.ClientOSError`` (RST),
whether or not the object was created; a wrong CA is ``ClientConnectorCertificateError``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import config, watch
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from . import k8s_fixtures
from .k8s import FakeKubernetes
from .k8s_fixtures import batch_api as batch
from .k8s_fixtures import core_api as core
from .k8s_fixtures import error_body as body_of
from .k8s_fixtures import make_job
from .k8s_tls import make_certificates

# Fixtures, bound here so this module works whether or not a conftest imports them too.
fake_k8s = k8s_fixtures.fake_k8s
fake_k8s_tls = k8s_fixtures.fake_k8s_tls
k8s_api = k8s_fixtures.k8s_api

NS = "default"


async def names(api: ApiClient) -> list[str]:
    result = await batch(api).list_namespaced_job(NS)
    return sorted(j.metadata.name for j in result.items)


# --- faults ----------------------------------------------------------------------------------


async def test_fail_next_429_and_5xx(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    fake_k8s.fail_next(1, 429, "/apis/batch", retry_after=0.5)
    fake_k8s.fail_next(1, 503, "/apis/batch")
    fake_k8s.fail_next(1, 500, "/apis/batch")
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).create_namespaced_job(NS, make_job("f"))
    assert exc.value.status == 429 and exc.value.headers is not None
    assert exc.value.headers["Retry-After"] == "0.5"
    assert body_of(exc.value)["reason"] == "TooManyRequests"
    assert body_of(exc.value)["details"] == {"retryAfterSeconds": 1}
    for status, reason in ((503, "ServiceUnavailable"), (500, "InternalError")):
        with pytest.raises(ApiException) as exc:
            await batch(k8s_api).list_namespaced_job(NS)
        assert exc.value.status == status and body_of(exc.value)["reason"] == reason
    # Core paths were never affected, and now batch works again.
    await core(k8s_api).list_namespaced_pod(NS)
    await batch(k8s_api).create_namespaced_job(NS, make_job("f"))
    assert fake_k8s.creates_accepted == 1


async def test_dropped_create_creates_nothing(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    fake_k8s.drop_next()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await batch(k8s_api).create_namespaced_job(NS, make_job("dropped"))
    assert fake_k8s.jobs() == [] and fake_k8s.creates_received == 1
    assert fake_k8s.requests[-1].status is None


async def test_lost_response_create_exists(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    fake_k8s.lose_next_response()
    job = make_job("lost", labels={"caliban/job": "uuid-1"})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await batch(k8s_api).create_namespaced_job(NS, job)
    # Same exception as a drop, but the Job is there: only a list can tell them apart.
    found = await batch(k8s_api).list_namespaced_job(NS, label_selector="caliban/job=uuid-1")
    assert [j.metadata.name for j in found.items] == ["lost"]
    # A blind retry with generateName would have made a duplicate; the fake can count them.
    await batch(k8s_api).create_namespaced_job(
        NS, make_job(None, generate_name="lost-", labels={"caliban/job": "uuid-1"})
    )
    assert fake_k8s.duplicates("caliban/job") == {"uuid-1": 2}


async def test_reset_style_drop(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    fake_k8s.disconnect_style = "reset"
    fake_k8s.drop_next()
    with pytest.raises(aiohttp.ClientOSError):
        await batch(k8s_api).create_namespaced_job(NS, make_job("rst"))


async def test_random_create_faults(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    fake_k8s.error_rate = 1.0
    with pytest.raises(ApiException) as exc:
        await batch(k8s_api).create_namespaced_job(NS, make_job("e"))
    assert exc.value.status == 500
    fake_k8s.error_rate, fake_k8s.drop_rate = 0.0, 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await batch(k8s_api).create_namespaced_job(NS, make_job("d"))
    fake_k8s.drop_rate, fake_k8s.lost_response_rate = 0.0, 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await batch(k8s_api).create_namespaced_job(NS, make_job("l"))
    assert [j["metadata"]["name"] for j in fake_k8s.jobs()] == ["l"]
    # Reads are not affected by create faults.
    assert await names(k8s_api) == ["l"]


async def test_latency_and_client_timeout(fake_k8s: FakeKubernetes, k8s_api: ApiClient) -> None:
    fake_k8s.create_latency = 0.5
    with pytest.raises(asyncio.TimeoutError):
        await batch(k8s_api).create_namespaced_job(NS, make_job("slow"), _request_timeout=0.1)
    # The server was still sleeping when the client gave up, so nothing was stored.
    await asyncio.sleep(0.6)
    assert fake_k8s.jobs() == []
    fake_k8s.create_latency, fake_k8s.latency = 0.0, 0.05
    await batch(k8s_api).list_namespaced_job(NS)


# --- auth, kubeconfig, TLS -------------------------------------------------------------------


async def test_wrong_token_is_401(fake_k8s: FakeKubernetes) -> None:
    api = await config.new_client_from_config_dict(fake_k8s.kubeconfig_dict(token="wrong"))
    async with api:
        with pytest.raises(ApiException) as exc:
            await batch(api).list_namespaced_job(NS)
        assert exc.value.status == 401 and body_of(exc.value)["reason"] == "Unauthorized"
        # Through a watch the 401 arrives as the body of an unpreloaded response.
        with pytest.raises(ApiException) as exc:
            async with watch.Watch() as w:
                async for _ in w.stream(batch(api).list_namespaced_job, NS, timeout_seconds=1):
                    pass
        assert exc.value.status == 401


async def test_token_validator() -> None:
    seen: list[str] = []

    async def validate(token: str) -> bool:
        seen.append(token)
        return token.startswith("ya29.")

    async with FakeKubernetes(token_validator=validate) as kube:
        for token, ok in (("ya29.good", True), ("bad", False)):
            api = await config.new_client_from_config_dict(kube.kubeconfig_dict(token=token))
            async with api:
                if ok:
                    await batch(api).list_namespaced_job(NS)
                else:
                    with pytest.raises(ApiException):
                        await batch(api).list_namespaced_job(NS)
    assert seen == ["ya29.good", "bad"]


async def test_kubeconfig_file(fake_k8s: FakeKubernetes, tmp_path: Path) -> None:
    path = fake_k8s.kubeconfig(tmp_path / "kc.yaml", namespace="kube-system")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    api = await config.new_client_from_config(config_file=str(path))
    async with api:
        await batch(api).create_namespaced_job("kube-system", make_job("from-file"))
    assert fake_k8s.job("kube-system", "from-file") is not None


async def test_tls_verifies_with_the_cluster_ca(fake_k8s_tls: FakeKubernetes) -> None:
    kcfg = fake_k8s_tls.kubeconfig_dict()
    assert kcfg["clusters"][0]["cluster"]["server"].startswith("https://127.0.0.1:")
    api = await config.new_client_from_config_dict(kcfg)
    async with api:
        await batch(api).create_namespaced_job(NS, make_job("secure"))
    # The plain listener serves the same cluster.
    plain = await config.new_client_from_config_dict(fake_k8s_tls.kubeconfig_dict(tls=False))
    async with plain:
        assert await names(plain) == ["secure"]


async def test_tls_refuses_a_wrong_ca(fake_k8s_tls: FakeKubernetes) -> None:
    other_ca = make_certificates().ca_cert_pem
    api = await config.new_client_from_config_dict(fake_k8s_tls.kubeconfig_dict(ca_pem=other_ca))
    async with api:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await batch(api).list_namespaced_job(NS)
    assert fake_k8s_tls.list_calls == 0


async def test_aiohttp_retries_a_dropped_get_once(
    fake_k8s: FakeKubernetes, k8s_api: ApiClient
) -> None:
    """aiohttp silently re-sends an idempotent request whose reused connection was dropped."""
    await batch(k8s_api).list_namespaced_job(NS)  # opens the keep-alive connection
    fake_k8s.drop_next(1, method="GET")
    await batch(k8s_api).list_namespaced_job(NS)  # no error: retried on a new connection
    statuses = [r.status for r in fake_k8s.requests if r.method == "GET"]
    assert statuses == [200, None, 200]
    # POSTs are never re-sent, so a dropped create always surfaces.
    fake_k8s.drop_next(1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await batch(k8s_api).create_namespaced_job(NS, make_job("once"))
