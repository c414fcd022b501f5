"""The Kubernetes client's HTTP session: the proxy environment read once, not per request."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s

from caliban.errors import BackendError
from caliban.platforms.kubernetes import client as kc
from caliban.platforms.kubernetes.spec import ClusterTarget


@pytest.fixture(autouse=True)
def _clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A forward proxy that answers every request itself, recording what it was asked."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(
            {
                "url": str(request.url),
                "method": request.method,
                "headers": dict(request.headers),
                "body": await request.json() if request.can_read_body else None,
            }
        )
        return web.json_response({"metadata": {"name": "made"}}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def _api(host: str, proxy: str | None = None) -> kc.JsonApiClient:
    config = type.__call__(k8s.Configuration)
    config.host = host
    config.api_key = {"BearerToken": "secret-token"}
    config.api_key_prefix = {"BearerToken": "Bearer"}
    config.proxy = proxy
    return kc.JsonApiClient(configuration=config)


_TARGET = ClusterTarget.from_details({"kind": "kubeconfig", "kubeconfig": "kc", "namespace": "ns"})
_BODY = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j1"}}


async def test_the_environment_proxy_still_carries_requests(
    proxy: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", url.replace("http://", "http://user:pw@"))
    api = _api("http://cluster.invalid:8080")
    connector = api.rest_client.pool_manager.connector
    await kc.settle_transport(api)
    session = api.rest_client.pool_manager
    assert session.connector is connector and not session.trust_env
    try:
        await kc.KubeClient(api, _TARGET).create_job("ns", _BODY, want_body=False)
    finally:
        await api.close()
    assert connector is not None and connector.closed
    (request,) = seen
    assert request["url"] == "http://cluster.invalid:8080/apis/batch/v1/namespaces/ns/jobs"
    assert request["headers"]["Authorization"] == "Bearer secret-token"
    assert request["headers"]["Proxy-Authorization"] == "Basic " + base64.b64encode(
        b"user:pw"
    ).decode("ascii")
    assert request["body"] == _BODY


async def test_no_proxy_and_a_kubeconfig_proxy_url_are_respected(
    proxy: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = proxy
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "cluster.internal")
    api = _api("http://cluster.internal:8080")
    await kc.settle_transport(api)
    assert api.rest_client.proxy is None
    await api.close()
    api = _api("http://cluster.invalid:8080", proxy=url)  # proxy-url in the kubeconfig wins
    await kc.settle_transport(api)
    assert api.rest_client.proxy == url
    await api.close()


async def test_plain_bodies_are_sent_as_given_and_models_still_serialised(
    proxy: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    api = _api("http://cluster.invalid:8080")
    await kc.settle_transport(api)
    body = {
        "metadata": {"name": "j2", "labels": {"a": "1"}},
        "spec": {"args": ("--x", "1"), "n": 3, "f": 0.5, "none": None, "ok": True},
    }
    try:
        await kc.KubeClient(api, _TARGET).create_job("ns", body, want_body=False)
        with pytest.raises(TypeError):
            await kc.KubeClient(api, _TARGET).create_job(
                "ns", {"metadata": {"name": "j3"}, "when": object()}
            )
    finally:
        await api.close()
    assert seen[0]["body"] == {
        "metadata": {"name": "j2", "labels": {"a": "1"}},
        "spec": {"args": ["--x", "1"], "n": 3, "f": 0.5, "none": None, "ok": True},
    }
    assert len(seen) == 1  # the bad body never left
    meta = k8s.V1ObjectMeta(name="m", labels={"b": "2"})
    assert api.sanitize_for_serialization(meta) == {"name": "m", "labels": {"b": "2"}}
    assert api.sanitize_for_serialization([meta]) == [{"name": "m", "labels": {"b": "2"}}]


async def test_a_create_sends_the_recorded_text_with_the_clients_headers_and_fresh_auth(
    proxy: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Job create bypasses the generated API, not the ApiClient: its default headers,
    its cookie and its token hook (as exec plugins and GKE use it) apply per request."""
    url, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    api = _api("http://cluster.invalid:8080")
    api.cookie = "session=abc"
    tokens = iter(["first", "second"])

    async def refresh(cfg: Any) -> None:
        cfg.api_key["BearerToken"] = next(tokens)

    api.configuration.refresh_api_key_hook = refresh
    await kc.settle_transport(api)
    text = '{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"j4"},"spec":{"x":[1]}}'
    client = kc.KubeClient(api, _TARGET)
    try:
        await client.create_job("ns", {"metadata": {"name": "j4"}}, want_body=False, encoded=text)
        made = await client.create_job("ns", _BODY)
    finally:
        await api.close()
    assert made == {"metadata": {"name": "made"}}
    first, second = seen
    assert first["body"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j4"},
        "spec": {"x": [1]},
    }
    assert second["body"] == _BODY
    for request, token in ((first, "first"), (second, "second")):
        assert request["method"] == "POST"
        assert request["url"] == "http://cluster.invalid:8080/apis/batch/v1/namespaces/ns/jobs"
        assert request["headers"]["Authorization"] == f"Bearer {token}"
        assert request["headers"]["User-Agent"] == api.user_agent
        assert request["headers"]["Cookie"] == "session=abc"
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["headers"]["Accept"] == "application/json"


async def test_a_refused_create_is_translated_with_the_servers_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handle(request: web.Request) -> web.Response:
        status = {"kind": "Status", "message": "jobs.batch exists", "reason": "AlreadyExists"}
        return web.json_response(status, status=409)

    app = web.Application()
    app.router.add_post("/apis/batch/v1/namespaces/ns/jobs", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api = _api(f"http://127.0.0.1:{port}")
    await kc.settle_transport(api)
    try:
        with pytest.raises(BackendError, match=r"jobs\.batch exists") as caught:
            await kc.KubeClient(api, _TARGET).create_job("ns", _BODY, want_body=False)
    finally:
        await api.close()
        await runner.cleanup()
    assert caught.value.status == 409 and not caught.value.retryable
