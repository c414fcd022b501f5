"""Connections to Kubernetes API servers with kubernetes-asyncio, and raw JSON calls.

Two ways in, both ending in one ``ApiClient`` per cluster, owned by the session:

* **kubeconfig** (any cluster): the file(s) named by ``--kubeconfig`` or
  ``$KUBECONFIG`` (default ``~/.kube/config``) and ``--context``, loaded into a
  private ``Configuration`` - never the library's global default, so two clusters
  can be used at once. Nothing is written back to the file.
* **GKE**: the cluster's endpoint and CA certificate from the GKE API; TLS is
  verified against that CA, and every request carries a fresh OAuth token from
  the session's credentials (``refresh_api_key_hook``), so a long sweep never
  runs on an expired token.

Calls use the generated API classes with ``_preload_content=False`` and read the
JSON themselves: objects stay plain dicts (exactly what was sent and what the
manifests are), decoding is several times cheaper than building models, and pod
logs are not mangled by the generated JSON decoding. A Job create, the one call a
sweep makes hundreds of times, skips the generated layer: its recorded JSON text is
POSTed on the ApiClient's own session with the ApiClient's headers and authentication
(:meth:`KubeClient._post_json`). Every aiohttp or HTTP error
becomes a :class:`~caliban.errors.BackendError` here: 429/5xx and connection
failures are retryable, and a create whose connection dropped is
:class:`~caliban.errors.OutcomeUnknown` (the object may exist).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import aiohttp
import anyio
import yaml
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from caliban.errors import (
    AuthError,
    BackendError,
    MissingExtra,
    NotFound,
    OutcomeUnknown,
    QuotaError,
    ValidationError,
)

# Optional: the [cluster] extra. Checked before caliban.adapters.cloud, which needs the other
# half of that extra, so a bare install is told the extra Kubernetes needs.
try:
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio.client import rest
    from kubernetes_asyncio.config.config_exception import ConfigException
    from kubernetes_asyncio.config.kube_config import KubeConfigLoader, KubeConfigMerger
except ModuleNotFoundError:
    raise MissingExtra(
        "cluster", feature="Kubernetes support", package="kubernetes_asyncio"
    ) from None

from caliban.adapters.cloud.http import parse_retry_after
from caliban.limits import RetryPolicy, with_retries
from caliban.platforms.kubernetes.spec import ClusterTarget
from caliban.platforms.kubernetes.versions import ServerVersion, parse_version

if TYPE_CHECKING:
    from caliban.platforms.base import Context

DEFAULT_KUBECONFIG = "~/.kube/config"
_PAGE = 500
_QUICK = RetryPolicy(attempts=3, initial=0.3, max_delay=2, deadline=20)


# -- kubeconfig ------------------------------------------------------------------------------


def kubeconfig_paths(flag: str | None, environ: Mapping[str, str]) -> str:
    """``--kubeconfig``, else ``$KUBECONFIG``, else ~/.kube/config; made absolute,
    because the path is recorded and status may run from another folder."""
    raw = flag or environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
    parts = [p for p in raw.split(os.pathsep) if p.strip()]
    return os.pathsep.join(str(Path(p).expanduser().resolve()) for p in parts)


def read_kubeconfig(paths: str, context: str | None) -> tuple[str, str | None]:
    """Check the kubeconfig without connecting: returns (context, its namespace).

    Blocking (reads files): call it in a thread.
    """
    existing = [p for p in paths.split(os.pathsep) if Path(p).is_file()]
    if not existing:
        raise ValidationError(
            f"kubeconfig {paths} does not exist",
            hint="pass --kubeconfig FILE, set KUBECONFIG, or use a GKE cluster (--cluster_name)",
        )
    contexts: dict[str, dict[str, Any]] = {}
    current = None
    for path in existing:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValidationError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValidationError(f"kubeconfig {path} is not a kubeconfig file")
        for item in data.get("contexts") or []:
            if isinstance(item, dict) and item.get("name"):
                contexts.setdefault(str(item["name"]), item.get("context") or {})
        current = current or data.get("current-context")
    name = context or current
    if not name:
        raise ValidationError(f"kubeconfig {paths} sets no current-context: pass --context")
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise ValidationError(f"no context {name!r} in kubeconfig {paths} (found: {known})")
    namespace = contexts[name].get("namespace")
    return name, (str(namespace) if namespace else None)


def _tls_free(config: Any) -> bool:
    """Whether a cluster is reached over plain http with no TLS setting at all: no CA
    file, client certificate, relaxed verification or TLS server name."""
    return (
        str(config.host).lower().startswith("http://")
        and config.ssl_ca_cert is None
        and config.cert_file is None
        and config.key_file is None
        and config.verify_ssl
        and not config.disable_strict_ssl_verification
        and config.tls_server_name is None
    )


class _TlsFreeRest(rest.RESTClientObject):
    """kubernetes_asyncio's REST client for a cluster where :func:`_tls_free` holds.

    The library's own builds a TLS context first, whatever the scheme: loading the
    system's CA certificates, 30-45 ms of a sweep's start on a small machine, for a
    connection that never uses TLS. This one has the same session, connector bound
    and proxy settings, and its connector uses aiohttp's shared verified context,
    made once when aiohttp is imported. Should TLS ever be needed after all (a
    redirect to https, an https proxy), it is verified exactly as the library's
    context would verify it: system CAs, hostname checked, strict X.509 flags.
    """

    def __init__(self, configuration: Any) -> None:  # the library's, minus the TLS context
        self.server_hostname = configuration.tls_server_name
        self.proxy = configuration.proxy
        self.proxy_headers = configuration.proxy_headers
        connector = aiohttp.TCPConnector(limit=configuration.connection_pool_maxsize, ssl=True)
        self.pool_manager = aiohttp.ClientSession(
            connector=connector, trust_env=True, read_bufsize=2**21
        )


# What ApiClient.__init__ sets as User-Agent; a unit test keeps it the library's.
_USER_AGENT = "OpenAPI-Generator/33.3.0+snapshot/python"


class JsonApiClient(k8s.ApiClient):
    """kubernetes_asyncio's ApiClient, for callers that send plain JSON data.

    Every body here is a dict of strings, numbers, booleans, None, lists and dicts
    (manifests, ConfigMaps, merge patches), never a generated model. For such data
    the library's ``sanitize_for_serialization`` is an identity that rebuilds every
    dict and list of the body in Python: about a fifth of a Job create's client CPU.
    It is skipped for dicts; ``json.dumps`` in the REST layer still serialises the
    body, and fails loudly on anything that is not JSON. Everything else (URL, query,
    headers, authentication, TLS) is the library's own path; a plain-http cluster's
    REST client just has no TLS context of its own (:class:`_TlsFreeRest`).
    """

    def __init__(self, configuration: Any) -> None:
        if not _tls_free(configuration):
            super().__init__(configuration=configuration)
            return
        # ApiClient.__init__ with the other REST client (a unit test compares the two).
        self.configuration = configuration
        self.pool_threads = 1
        self.rest_client = _TlsFreeRest(configuration)
        self.default_headers: dict[str, str] = {}
        self.cookie = None  # type: ignore[assignment]  # the library's default too
        self.user_agent = _USER_AGENT
        self.client_side_validation = configuration.client_side_validation

    def sanitize_for_serialization(self, obj: Any) -> Any:
        if type(obj) is dict:
            return obj
        return super().sanitize_for_serialization(obj)


async def _kubeconfig_client(target: ClusterTarget) -> k8s.ApiClient:
    assert target.kubeconfig is not None
    # Checked first: the library only logs a warning for a missing file.
    await anyio.to_thread.run_sync(read_kubeconfig, target.kubeconfig, target.context)
    # The merger reads files (blocking); nothing is written back, so a token refresh
    # never rewrites the user's kubeconfig.
    merged = await anyio.to_thread.run_sync(KubeConfigMerger, target.kubeconfig)
    config = type.__call__(k8s.Configuration)
    try:
        loader = KubeConfigLoader(
            config_dict=merged.config, config_base_path=None, active_context=target.context
        )
        await loader.load_and_set(config)
    except (ConfigException, KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"kubeconfig {target.kubeconfig}: {exc}") from exc
    return JsonApiClient(configuration=config)


def gke_client(endpoint: str, ca_file: str, token: Callable[[], Awaitable[str]]) -> k8s.ApiClient:
    """An ApiClient for a GKE control plane: verified TLS and a token per request."""
    config = type.__call__(k8s.Configuration)
    config.host = f"https://{endpoint}"
    config.ssl_ca_cert = ca_file
    config.verify_ssl = True
    # kubernetes_asyncio only calls the hook when a BearerToken is already set.
    config.api_key = {"BearerToken": "pending"}
    config.api_key_prefix = {"BearerToken": "Bearer"}

    async def refresh(cfg: Any) -> None:
        cfg.api_key["BearerToken"] = await token()

    config.refresh_api_key_hook = refresh
    return JsonApiClient(configuration=config)


def _env_proxy(host: str) -> str | None:
    """The proxy the environment names for ``host``, the way aiohttp reads it with
    ``trust_env`` (HTTP(S)_PROXY, NO_PROXY, credentials in the URL or ~/.netrc),
    credentials kept in the URL, where aiohttp turns them into Proxy-Authorization.
    Blocking (reads ~/.netrc)."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(host))
    except LookupError:
        return None
    if auth is not None:
        proxy = proxy.with_user(auth.login).with_password(auth.password)
    return str(proxy)


async def settle_transport(api: k8s.ApiClient) -> None:
    """Fix per cluster what kubernetes_asyncio's HTTP session looks up per request.

    The library makes its aiohttp session with ``trust_env=True``, so every request
    asks a worker thread for ~/.netrc credentials and another for the proxy
    environment: two thread hops a request, most of the client's CPU in a sweep of
    hundreds of creates on a small machine. The proxy is looked up once here instead
    (a kubeconfig ``proxy-url`` still wins), and the session is remade on the
    library's own connector (its TLS context, client certificate and pool) without
    ``trust_env``. Authentication is untouched: tokens, exec plugins and refresh hooks
    still run per request in the ApiClient. netrc credentials are dropped on purpose:
    kubectl never sends them, and next to a bearer token aiohttp refuses the request.
    """
    rest = api.rest_client
    old = rest.pool_manager
    if rest.proxy is None:
        rest.proxy = await anyio.to_thread.run_sync(_env_proxy, api.configuration.host)
    connector = old.connector
    old.detach()  # the new session owns the connector and closes it
    # The library's read buffer: a watch event of a big object outgrows aiohttp's default.
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=2**21
    )


# -- errors ------------------------------------------------------------------------------------


def status_error(status: int, body: str, headers: Mapping[str, str], what: str) -> BackendError:
    """A Kubernetes ``Status`` answer as a BackendError."""
    message, reason = body.strip()[:300] or f"HTTP {status}", ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = str(data.get("message") or message)
        reason = str(data.get("reason") or "")
    text = f"{what}: {message}"
    if status == 401:
        return AuthError(text, status=status, hint="the cluster did not accept the credentials")
    if status == 403:
        return AuthError(text, status=status, hint="the account lacks a permission (RBAC)")
    if status == 404:
        return NotFound(text, status=status)
    if status == 429:
        return QuotaError(
            text,
            status=status,
            retryable=True,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    retryable = status >= 500 or reason in ("ServerTimeout", "Timeout")
    return BackendError(
        text,
        status=status,
        retryable=retryable,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


def _connection_error(exc: BaseException, url: str, what: str, *, create: bool) -> BackendError:
    if isinstance(exc, aiohttp.ClientSSLError):
        return BackendError(
            f"{what}: the TLS certificate of {url} cannot be verified ({exc})",
            hint="the cluster's CA certificate does not match: check the kubeconfig's "
            "certificate-authority(-data), or the GKE cluster's endpoint",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Never reached the server: safe to send again.
        return BackendError(
            f"{what}: cannot connect to {url} ({exc.os_error or exc})", retryable=True
        )
    detail = f"{what}: connection lost ({type(exc).__name__}: {exc or 'no response'})"
    return OutcomeUnknown(detail) if create else BackendError(detail, retryable=True)


# -- the client ---------------------------------------------------------------------------------


class KubeClient:
    """JSON calls to one cluster, errors translated."""

    def __init__(self, api: k8s.ApiClient, target: ClusterTarget) -> None:
        self.api = api
        self.target = target
        self.batch: Any = k8s.BatchV1Api(api)
        self.core: Any = k8s.CoreV1Api(api)
        self.version_api: Any = k8s.VersionApi(api)
        self._version: ServerVersion | None = None
        self._version_lock = anyio.Lock()
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def url(self) -> str:
        return str(self.api.configuration.host)

    async def _call(
        self,
        what: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        create: bool = False,
        missing_ok: bool = False,
        seconds: float = 60.0,
        parse: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any] | None:
        return await self._answer(
            what,
            lambda: fn(*args, _preload_content=False, _request_timeout=seconds, **kwargs),
            create=create,
            missing_ok=missing_ok,
            parse=parse,
        )

    async def _answer(
        self,
        what: str,
        send: Callable[[], Awaitable[Any]],
        *,
        create: bool = False,
        missing_ok: bool = False,
        parse: bool = True,
    ) -> dict[str, Any] | None:
        """Send, read the whole answer and translate it: the decoded JSON object, {}
        when ``parse`` is off or the answer is empty, None for a 404 if ``missing_ok``."""
        try:
            response = await send()
            try:
                raw: bytes = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _connection_error(exc, self.url, what, create=create) from exc
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 400:
            text = raw.decode("utf-8", errors="replace")
            raise status_error(response.status, text, response.headers, what)
        if not parse or not raw.strip():
            return {}
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise BackendError(
                f"{what}: the cluster answered with something that is not JSON", retryable=True
            ) from exc
        return data

    async def _post_json(self, path: str, data: bytes, *, seconds: float) -> Any:
        """POST a body already serialised to JSON, the way the library's ApiClient
        sends one: its default headers (User-Agent) and cookie, its authentication
        (tokens, exec plugins and refresh hooks run here, per request), its REST
        client's session (TLS, client certificate, pool), proxy and TLS server name.

        What is skipped is the generic part of ``ApiClient.call_api`` (parameter
        sanitising and assembly) and the REST layer's own ``json.dumps`` of the
        body: together a third of a Job create's client CPU, and a sweep's bodies
        are serialised once anyway, for the store (see :meth:`create_job`).
        """
        api = self.api
        headers: dict[str, str] = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            **api.default_headers,
        }
        if api.cookie:
            headers["Cookie"] = api.cookie
        queries: list[tuple[str, str]] = []
        await api.update_params_for_auth(headers, queries, ["BearerToken"])
        url = self.url + path
        if queries:
            url += "?" + urlencode(queries)
        rest = api.rest_client
        options: dict[str, Any] = {}
        if rest.proxy:
            options["proxy"] = rest.proxy
        if rest.proxy_headers:
            options["proxy_headers"] = rest.proxy_headers
        if rest.server_hostname:
            options["server_hostname"] = rest.server_hostname
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds)
        return await rest.pool_manager.request(
            "POST", url, headers=headers, data=data, timeout=timeout, **options
        )

    async def _must(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        found = await self._call(what, fn, *args, **kwargs)
        assert found is not None
        return found

    async def check(self, namespace: str) -> None:
        """Reach the cluster and its namespace before anything is built or recorded."""

        async def read() -> dict[str, Any] | None:
            return await self._call(
                f"reaching {self.target.display}",
                self.core.read_namespace,
                namespace,
                missing_ok=True,
                seconds=15,
            )

        try:
            found = await with_retries(read, _QUICK)
        except AuthError as exc:
            if exc.status == 403:
                return  # may not read namespaces, may still create Jobs
            raise
        if found is None:
            raise ValidationError(
                f"namespace {namespace!r} does not exist on {self.target.display}",
                hint="pass --namespace",
            )

    async def server_version(self) -> ServerVersion:
        """The cluster's ``/version``, read once per client (a session's whole life)."""
        async with self._version_lock:
            if self._version is None:
                what = f"reading the Kubernetes version of {self.target.display}"
                body = await with_retries(
                    lambda: self._must(what, self.version_api.get_code, seconds=15), _QUICK
                )
                try:
                    self._version = parse_version(body)
                except ValueError as exc:
                    raise BackendError(f"{what}: {exc}") from exc
            return self._version

    # jobs
    async def create_job(
        self,
        namespace: str,
        body: Mapping[str, Any],
        *,
        want_body: bool = True,
        encoded: str | None = None,
    ) -> dict[str, Any]:
        """Create a Job; ``want_body=False`` skips decoding the answer (a big sweep's
        creates only need to know they succeeded). ``encoded``: ``body`` already as
        JSON text (as the store recorded it), sent as is."""
        if encoded is None:
            # No default=: anything that is not JSON data fails here, before sending.
            encoded = json.dumps(body, separators=(",", ":"))
        path = (
            "/apis/batch/v1/namespaces/"
            + quote(namespace, safe=self.api.configuration.safe_chars_for_path_param)
            + "/jobs"
        )
        data = encoded.encode()
        return await self._must_answer(
            f"creating Job {body['metadata'].get('name')}",
            lambda: self._post_json(path, data, seconds=30),
            create=True,
            parse=want_body,
        )

    async def _must_answer(
        self,
        what: str,
        send: Callable[[], Awaitable[Any]],
        *,
        create: bool = False,
        parse: bool = True,
    ) -> dict[str, Any]:
        found = await self._answer(what, send, create=create, parse=parse)
        assert found is not None
        return found

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(
            f"reading Job {name}",
            self.batch.read_namespaced_job,
            name,
            namespace,
            missing_ok=True,
            seconds=30,
        )

    async def delete_job(self, namespace: str, name: str, *, propagation: str) -> bool:
        # No body: a DeleteOptions body would override the propagationPolicy query,
        # and a Job deleted without one orphans its pods.
        found = await self._call(
            f"deleting Job {name}",
            self.batch.delete_namespaced_job,
            name,
            namespace,
            propagation_policy=propagation,
            missing_ok=True,
            seconds=30,
        )
        return found is not None

    async def _pages(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            extra = {"_continue": token} if token else {}

            async def page(extra: dict[str, str] = extra) -> dict[str, Any]:
                return await self._must(what, fn, *args, limit=_PAGE, **extra, **kwargs)

            body = await with_retries(page, _QUICK)
            items += body.get("items") or []
            token = (body.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    async def list_jobs(
        self, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        kw = {"label_selector": selector} if selector else {}
        if namespace is None:
            return await self._pages("listing Jobs", self.batch.list_job_for_all_namespaces, **kw)
        return await self._pages(
            f"listing Jobs in {namespace}", self.batch.list_namespaced_job, namespace, **kw
        )

    # config maps
    async def create_configmap(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._must(
            f"creating ConfigMap {body['metadata']['name']}",
            self.core.create_namespaced_config_map,
            namespace,
            dict(body),
            create=True,
            seconds=30,
        )

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(
            f"reading ConfigMap {name}",
            self.core.read_namespaced_config_map,
            name,
            namespace,
            missing_ok=True,
            seconds=30,
        )

    async def patch_configmap(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (the generated client sends a dict as one)."""
        return await self._must(
            f"updating ConfigMap {name}",
            self.core.patch_namespaced_config_map,
            name,
            namespace,
            dict(patch),
            seconds=30,
            _content_type="application/merge-patch+json",
        )

    async def delete_configmap(self, namespace: str, name: str) -> bool:
        found = await self._call(
            f"deleting ConfigMap {name}",
            self.core.delete_namespaced_config_map,
            name,
            namespace,
            missing_ok=True,
            seconds=30,
        )
        return found is not None

    # pods
    async def list_pods(
        self, namespace: str | None, selector: str | None = None, fields: str | None = None
    ) -> list[dict[str, Any]]:
        kw: dict[str, str] = {}
        if selector:
            kw["label_selector"] = selector
        if fields:
            kw["field_selector"] = fields
        if namespace is None:
            return await self._pages("listing pods", self.core.list_pod_for_all_namespaces, **kw)
        return await self._pages(
            f"listing pods in {namespace}", self.core.list_namespaced_pod, namespace, **kw
        )

    async def delete_pod(self, namespace: str, name: str) -> bool:
        found = await self._call(
            f"deleting pod {name}",
            self.core.delete_namespaced_pod,
            name,
            namespace,
            missing_ok=True,
            seconds=30,
        )
        return found is not None

    async def pod_log(self, namespace: str, pod: str, *, follow: bool) -> AsyncIterator[str]:
        what = f"reading the log of pod {pod}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        try:
            response = await self.core.read_namespaced_pod_log(
                pod, namespace, follow=follow, _preload_content=False, _request_timeout=timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _connection_error(exc, self.url, what, create=False) from exc
        try:
            if response.status >= 400:
                raise status_error(response.status, await response.text(), response.headers, what)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            try:
                async for chunk in response.content.iter_any():
                    text = decoder.decode(chunk)
                    if text:
                        yield text
            except aiohttp.ClientError as exc:
                raise _connection_error(exc, self.url, what, create=False) from exc
            if rest := decoder.decode(b"", final=True):
                yield rest
        finally:
            response.release()


# -- connections ---------------------------------------------------------------------------------


async def connections(ctx: Context) -> KubeConnections:
    """The session's Kubernetes connections, one per cluster, closed with it."""

    async def make() -> KubeConnections:
        return KubeConnections(ctx)

    found: KubeConnections = await ctx.resource("kubernetes.connections", make)
    return found


class KubeConnections:
    """One KubeClient per cluster for a whole session; closed with it."""

    def __init__(self, ctx: Context) -> None:
        self.session = ctx
        self._clients: dict[str, KubeClient] = {}
        self._lock = anyio.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def client(self, target: ClusterTarget) -> KubeClient:
        found = self._clients.get(target.key)
        if found is not None:
            return found
        async with self._lock:
            if target.key not in self._clients:
                api = await (
                    self._gke(target) if target.kind == "gke" else _kubeconfig_client(target)
                )
                await settle_transport(api)
                self._clients[target.key] = KubeClient(api, target)
            return self._clients[target.key]

    async def _gke(self, target: ClusterTarget) -> k8s.ApiClient:
        from caliban.adapters.cloud.gke_api import GkeApi
        from caliban.adapters.cloud.http import GoogleApi

        assert target.project and target.location and target.cluster
        creds = await self.session.credentials(target.cloud_key)
        gke = GkeApi(
            GoogleApi(await self.session.http(), creds), self.session.environ, target.endpoint
        )
        try:
            cluster = await gke.cluster(target.project, target.location, target.cluster)
        except NotFound as exc:
            raise ValidationError(
                f"no GKE cluster {target.cluster} in {target.location} (project {target.project})",
                hint="see `caliban cluster ls`",
            ) from exc
        if cluster.get("status") not in ("RUNNING", "RECONCILING", "DEGRADED"):
            raise BackendError(
                f"GKE cluster {target.cluster} is {cluster.get('status')}, not running",
                hint="wait for it, see `caliban cluster ls`",
            )
        endpoint = cluster.get("endpoint")
        ca_b64 = (cluster.get("masterAuth") or {}).get("clusterCaCertificate")
        if not endpoint or not ca_b64:
            raise BackendError(f"GKE cluster {target.cluster} has no endpoint or CA certificate")
        try:
            ca_pem = base64.b64decode(ca_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BackendError(f"GKE cluster {target.cluster}: bad CA certificate") from exc
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="caliban-ca-")
        ca_file = anyio.Path(self._tmp.name) / f"{len(self._clients)}-ca.pem"
        await ca_file.write_bytes(ca_pem)
        return gke_client(str(endpoint), str(ca_file), creds.token)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        with anyio.CancelScope(shield=True):
            for c in clients:
                await c.api.close()
        if self._tmp is not None:
            await anyio.to_thread.run_sync(self._tmp.cleanup)
            self._tmp = None
