"""The Kubernetes client's HTTP session: the proxy environment read once, not per request."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import TCPConnector, web
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client import rest

from caliban.errors import BackendError
from caliban.platforms.kubernetes import client as kc
from caliban.platforms.kubernetes.spec import ClusterTarget
from tests.fakes.k8s import FakeKubernetes
from tests.fakes.k8s_tls import make_certificates


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


# -- TLS contexts -------------------------------------------------------------------------------


def _config(host: str, **settings: Any) -> Any:
    config = type.__call__(k8s.Configuration)
    config.host = host
    for name, value in settings.items():
        setattr(config, name, value)
    return config


@pytest.fixture
def contexts_made(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The CA files of every TLS context kubernetes_asyncio's REST client builds."""
    made: list[object] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(kwargs.get("cafile"))
        return real(*args, **kwargs)

    # The REST module's own ``ssl`` is the ssl module: patched there, for this test only.
    monkeypatch.setattr(ssl, "create_default_context", counting)
    return made


async def test_a_plain_http_client_is_the_librarys_without_a_tls_context(
    contexts_made: list[object],
) -> None:
    config = _config("http://cluster.invalid:8080", proxy="http://proxy.invalid:3128")
    ours = kc.JsonApiClient(configuration=config)
    theirs = k8s.ApiClient(configuration=config)
    try:
        assert contexts_made == [None]  # the library's own, not ours
        assert type(ours.rest_client) is not rest.RESTClientObject
        mine, lib = vars(ours), vars(theirs)
        assert sorted(mine) == sorted(lib)
        assert {k: v for k, v in mine.items() if k != "rest_client"} == {
            k: v for k, v in lib.items() if k != "rest_client"
        }
        a, b = ours.rest_client, theirs.rest_client
        assert sorted(vars(a)) == sorted(vars(b))
        assert (a.proxy, a.proxy_headers, a.server_hostname) == (
            b.proxy,
            b.proxy_headers,
            b.server_hostname,
        )
        for attr in ("trust_env", "_read_bufsize"):
            assert getattr(a.pool_manager, attr) == getattr(b.pool_manager, attr)
        mine_conn, lib_conn = a.pool_manager.connector, b.pool_manager.connector
        assert isinstance(mine_conn, TCPConnector) and isinstance(lib_conn, TCPConnector)
        assert mine_conn.limit == lib_conn.limit
        # Were TLS needed after all, aiohttp's verified default applies: system CAs,
        # hostname checked, as the library's context without a CA file.
        assert mine_conn._ssl is True
    finally:
        await ours.close()
        await theirs.close()


@pytest.mark.parametrize(
    "host, settings",
    [
        ("https://cluster.invalid", {}),
        ("HTTPS://cluster.invalid", {}),
        ("http://cluster.invalid", {"verify_ssl": False}),
        ("http://cluster.invalid", {"tls_server_name": "api.internal"}),
        ("http://cluster.invalid", {"disable_strict_ssl_verification": True}),
        ("http://cluster.invalid", {"ssl_ca_cert": "CA"}),
    ],
)
async def test_https_or_any_tls_setting_keeps_the_librarys_tls_context(
    host: str, settings: dict[str, Any], tmp_path: Path, contexts_made: list[object]
) -> None:
    if settings.get("ssl_ca_cert") == "CA":
        settings["ssl_ca_cert"] = str(tmp_path / "ca.pem")
        Path(settings["ssl_ca_cert"]).write_text(make_certificates().ca_cert_pem)
    api = kc.JsonApiClient(configuration=_config(host, **settings))
    try:
        assert type(api.rest_client) is rest.RESTClientObject
        assert contexts_made == [settings.get("ssl_ca_cert")]
    finally:
        await api.close()
    # A client certificate alone is TLS material too (its files are loaded by the library).
    assert not kc._tls_free(_config("http://cluster.invalid", cert_file="c.pem"))
    assert not kc._tls_free(_config("http://cluster.invalid", key_file="k.pem"))


async def test_kubeconfig_clusters_verify_https_and_reach_http(tmp_path: Path) -> None:
    async with FakeKubernetes(seed=0, tls=True) as kube:

        async def version(**kubeconfig: Any) -> tuple[object, object]:
            path = kube.kubeconfig(tmp_path / "kubeconfig", **kubeconfig)
            target = ClusterTarget(kind="kubeconfig", kubeconfig=str(path))
            api = await kc._kubeconfig_client(target)
            await kc.settle_transport(api)
            try:
                return await kc.KubeClient(api, target).server_version(), api.rest_client
            finally:
                await api.close()

        _, secure = await version(tls=True)
        assert type(secure) is rest.RESTClientObject
        _, plain = await version(tls=False)
        assert type(plain) is not rest.RESTClientObject
        with pytest.raises(BackendError):
            await version(tls=True, ca_pem=make_certificates().ca_cert_pem)
