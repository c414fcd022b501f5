"""A fake Kubernetes API server that kubernetes_asyncio can talk to unchanged.

It serves the REST paths kubernetes_asyncio's ``BatchV1Api`` / ``CoreV1Api`` / ``watch.Watch``
use for Jobs, Pods (with logs), ConfigMaps and Namespaces, with the apiserver's JSON shapes:
``Status`` errors, lists that always carry ``items``, newline-delimited watch events, 410 Gone
for an expired resourceVersion, delete propagation policies. The test plays the Job controller
and kubelet through the drive methods (``succeed_job`` ...), and can inject faults: latency,
429/5xx, connections dropped before a create, and creates whose response is lost.

Typical use::

    async with FakeKubernetes() as kube:
        api = await config.new_client_from_config(config_file=str(kube.kubeconfig(tmp / "kc")))
        async with api:
            await client.BatchV1Api(api).create_namespaced_job("default", job)
        kube.succeed_job("default", job_name)

Only plain HTTP unless ``tls=True``, which adds an HTTPS listener whose certificate is signed
by a throw-away CA (``ca_cert_pem``), the way a GKE control plane is reached.

Layout: this module is the facade (lifecycle, knobs, drive methods, counters, kubeconfig);
``k8s_http`` routes and handles requests, ``k8s_stream`` serves watches and log follows,
``k8s_store`` keeps objects/selectors/watch history, ``k8s_admission`` validates and defaults
Jobs, ``k8s_jobs`` plays the Job controller and kubelet, ``k8s_tls`` makes the certificates.
"""

from __future__ import annotations

import base64
import copy
import random
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import yaml
from aiohttp import web

if TYPE_CHECKING:
    from typing_extensions import Self

from .google_http import DisconnectStyle
from .k8s_admission import PODS
from .k8s_http import Fault, KubeApi, RequestRecord, TokenValidator
from .k8s_jobs import AutoLifecycle, JobController, PodLogs
from .k8s_kueue import FakeKueue
from .k8s_schema import schema_dir
from .k8s_store import JsonObj, Store, new_uid, now_rfc3339
from .k8s_tls import CertBundle, make_certificates


class FakeKubernetes:
    """A fake kube-apiserver on 127.0.0.1 with a scriptable Job controller.

    Args:
        token: the bearer token clients must send (None disables auth unless a validator is set).
        token_validator: ``fn(token) -> bool`` (may be async), e.g. ``FakeOAuth.valid_token``;
            when given it replaces the fixed ``token``.
        namespaces: namespaces that exist; add more with :meth:`add_namespace`.
        tls: also serve HTTPS with a fresh CA (``https_url``, ``ca_cert_pem``).
        history_size: watch events kept; resuming from before them gives 410 Gone.
        watch_timeout: seconds a watch lasts when the client sends no ``timeoutSeconds``.
        seed: seed for the random fault knobs (``error_rate``, ``drop_rate``...).
        auto: an :class:`AutoLifecycle` to run every new Job on timers.
        foreground_delay: seconds a ``Foreground`` delete keeps the Job (with a deletion
            timestamp) before its pods and then the Job itself disappear.
        version: ``"1.27"``: the server reports v1.27.0 (else ``git_version``). Every object
            created or patched is validated against the strict OpenAPI schema of that minor
            (``k8s_schema``) besides the semantic checks of ``k8s_admission``; an invalid one
            gets the apiserver's 422 ``Invalid`` Status with ``details.causes``. The
            attribute ``validate_schemas = False`` skips the schema (benchmarks only).

    Fault knobs (plain attributes, change them any time): ``latency`` (every request),
    ``create_latency``, ``error_rate`` + ``error_status`` (creates), ``drop_rate`` (create
    connection dropped before anything is stored), ``lost_response_rate`` (object stored, then
    the connection dropped), ``disconnect_style`` ("close" = FIN, "reset" = RST), and the
    one-shot :meth:`fail_next`, :meth:`drop_next`, :meth:`lose_next_response`.

    Counters for Jobs: ``creates_received``, ``creates_accepted``, ``conflicts``, ``deletes``,
    ``list_calls``, ``watch_calls``; every resource in ``calls`` ("create jobs", "watch pods"
    ...); every request in ``requests``; ``object_order``, (kind, name) of each accepted create.
    """

    def __init__(
        self,
        *,
        token: str | None = "fake-k8s-token",
        token_validator: TokenValidator | None = None,
        namespaces: tuple[str, ...] = ("default", "kube-system", "kube-public"),
        tls: bool = False,
        history_size: int = 1000,
        watch_timeout: float = 60.0,
        seed: int | None = None,
        auto: AutoLifecycle | None = None,
        foreground_delay: float = 0.05,
        git_version: str = "v1.31.4-gke.1256000",
        version: str | None = None,
    ) -> None:
        self.token = token
        self.token_validator = token_validator
        self.tls = tls
        self.watch_timeout = watch_timeout
        self.foreground_delay = foreground_delay
        # "1.27" reports v1.27.0 at /version; objects are validated against its schema.
        self.git_version = f"v{version}.0" if version else git_version
        schema_dir(self.minor)  # refuse a version kubernetes-validate has no schema for
        # About 3 ms of CPU per Job: benchmarks measuring the client turn it off.
        self.validate_schemas = True
        self.object_order: list[tuple[str, str]] = []  # (kind, name) of every accepted create
        self.rng = random.Random(seed)
        self.store = Store(history_size)
        self.logs = PodLogs()
        self.controller = JobController(self.store, self.logs)
        self.controller.auto = auto
        # Kueue: Jobs labelled with a queue stay suspended until admitted (k8s_kueue).
        self.kueue = FakeKueue(self.store, self.controller)
        self.controller.kueue = self.kueue
        self.certs: CertBundle | None = make_certificates() if tls else None
        # fault knobs
        self.latency = 0.0
        self.create_latency = 0.0
        self.error_rate = 0.0
        self.error_status = 500
        self.drop_rate = 0.0
        self.lost_response_rate = 0.0
        self.disconnect_style: DisconnectStyle = "close"
        self.pending_faults: list[Fault] = []
        self.pending_drops: list[Fault] = []
        self.pending_lost = 0
        # observability
        self.creates_received = 0
        self.creates_accepted = 0
        self.conflicts = 0
        self.deletes = 0
        self.list_calls = 0
        self.watch_calls = 0
        self.calls: Counter[str] = Counter()
        self.requests: list[RequestRecord] = []
        self.created_jobs: list[JsonObj] = []  # snapshot of every accepted Job create
        self._runner: web.AppRunner | None = None
        self._api = KubeApi(self)
        self.port = 0
        self.https_port = 0
        for ns in namespaces:
            self.add_namespace(ns)

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._runner is not None:
            return self
        # A short shutdown timeout: open watches and log follows are woken on close anyway.
        runner = web.AppRunner(
            self._api.build_app(), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.port = int(runner.addresses[0][1])
            if self.certs is not None:
                site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.certs.server_context())
                await site.start()
                self.https_port = int(runner.addresses[-1][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def close(self) -> None:
        await self._api.close()
        self.store.close_subscribers()
        self.logs.close()
        await self.controller.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def minor(self) -> int:
        """The minor version reported at /version (and validated against)."""
        return int(self.git_version.lstrip("v").split(".")[1])

    @property
    def url(self) -> str:
        """Plain-HTTP base URL, e.g. ``http://127.0.0.1:41234``."""
        if self._runner is None:
            raise RuntimeError("FakeKubernetes is not running: call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_url(self) -> str:
        if self._runner is None or not self.https_port:
            raise RuntimeError("FakeKubernetes was not started with tls=True")
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` as a GKE cluster's ``endpoint`` field (HTTPS listener when TLS)."""
        return f"127.0.0.1:{self.https_port or self.port}"

    @property
    def ca_cert_pem(self) -> str:
        if self.certs is None:
            raise RuntimeError("FakeKubernetes was not created with tls=True")
        return self.certs.ca_cert_pem

    def kubeconfig_dict(
        self,
        namespace: str = "default",
        token: str | None = None,
        *,
        tls: bool | None = None,
        ca_pem: str | None = None,
        name: str = "fake",
    ) -> JsonObj:
        """A kubeconfig (as a dict) with one cluster, user and context for this server."""
        use_tls = self.tls if tls is None else tls
        cluster: JsonObj = {"server": self.https_url if use_tls else self.url}
        if use_tls:
            pem = ca_pem if ca_pem is not None else self.ca_cert_pem
            cluster["certificate-authority-data"] = base64.b64encode(pem.encode()).decode()
        user = f"{name}-user"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "current-context": name,
            "clusters": [{"name": name, "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token or self.token or "anonymous"}}],
            "contexts": [
                {"name": name, "context": {"cluster": name, "user": user, "namespace": namespace}}
            ],
        }

    def kubeconfig(
        self,
        path: str | Path,
        namespace: str = "default",
        token: str | None = None,
        *,
        tls: bool | None = None,
        ca_pem: str | None = None,
    ) -> Path:
        """Write :meth:`kubeconfig_dict` as YAML to ``path`` (mode 0600) and return it."""
        path = Path(path)
        path.write_text(
            yaml.safe_dump(
                self.kubeconfig_dict(namespace, token, tls=tls, ca_pem=ca_pem), sort_keys=False
            )
        )
        path.chmod(0o600)
        return path

    # knobs -------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        path_prefix: str | None = None,
        *,
        method: str | None = None,
        retry_after: float | None = 1.0,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (429 gets Retry-After)."""
        self.pending_faults.append(Fault(n, status, path_prefix, method, retry_after))

    def drop_next(
        self, n: int = 1, path_prefix: str | None = None, *, method: str | None = "POST"
    ) -> None:
        """Drop the connection of the next ``n`` matching requests before they do anything."""
        self.pending_drops.append(Fault(n, 0, path_prefix, method, None))

    def lose_next_response(self, n: int = 1) -> None:
        """The next ``n`` creates are stored, then their connection is dropped unanswered."""
        self.pending_lost += n

    def add_namespace(self, name: str) -> None:
        if self.store.get("namespaces", "", name) is None:
            self.store.insert(
                "namespaces",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": name,
                        "uid": new_uid(),
                        "creationTimestamp": now_rfc3339(),
                        "labels": {"kubernetes.io/metadata.name": name},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )

    def compact(self) -> None:
        """Drop the watch history: resuming from any earlier resourceVersion now gives 410."""
        self.store.compact()

    @property
    def auto(self) -> AutoLifecycle | None:
        return self.controller.auto

    @auto.setter
    def auto(self, value: AutoLifecycle | None) -> None:
        self.controller.auto = value

    # drive methods (the test as controller and kubelet) -----------------------------------

    def admit_job(self, ns: str, name: str) -> JsonObj:
        """Kueue admits a held Job: ``spec.suspend`` false, the controller makes its pods."""
        return self.kueue.admit(ns, name)

    def set_job_running(self, ns: str, name: str) -> JsonObj:
        """Pods Running and ready; status.active/ready/startTime set. Returns the Job."""
        return self.controller.set_running(ns, name)

    def succeed_job(self, ns: str, name: str) -> JsonObj:
        """All completions succeed: SuccessCriteriaMet, then Complete + completionTime."""
        return self.controller.succeed(ns, name)

    def fail_job(
        self, ns: str, name: str, reason: str = "BackoffLimitExceeded", message: str | None = None
    ) -> JsonObj:
        """FailureTarget, then Failed with ``reason``; active pods Failed, no completionTime."""
        return self.controller.fail(ns, name, reason, message)

    def succeed_index(self, ns: str, name: str, index: int) -> JsonObj:
        """Indexed Job: the pod of ``index`` succeeds (completedIndexes); next index starts."""
        return self.controller.succeed_index(ns, name, index)

    def fail_index(self, ns: str, name: str, index: int) -> JsonObj:
        """Indexed Job: the pod of ``index`` fails; retried, or failedIndexes / Job failure
        according to backoffLimitPerIndex / backoffLimit."""
        return self.controller.fail_index(ns, name, index)

    def fail_pod(self, ns: str, pod: str) -> JsonObj:
        """One pod fails (counts against backoffLimit; replaced while under it)."""
        self.controller.pod_failed(self.store.require(PODS, ns, pod))
        return copy.deepcopy(self.store.require(PODS, ns, pod))

    def set_pod_log(self, ns: str, pod: str, text: str, container: str | None = None) -> None:
        self.logs.set_pod(ns, pod, text, container)

    def append_pod_log(self, ns: str, pod: str, text: str, container: str | None = None) -> None:
        """Add output; ``follow=true`` readers receive it at once."""
        self.logs.append_pod(ns, pod, text, container)

    def set_job_log(self, ns: str, job: str, text: str) -> None:
        """Log text for every pod of ``job`` that has none of its own (also future pods)."""
        self.logs.set_job(ns, job, text)

    # observability -----------------------------------------------------------------------

    def jobs(self, ns: str | None = None) -> list[JsonObj]:
        return copy.deepcopy(self.store.list_objects("jobs", ns))

    def job(self, ns: str, name: str) -> JsonObj | None:
        return copy.deepcopy(self.store.get("jobs", ns, name))

    def pods(self, ns: str | None = None, job: str | None = None) -> list[JsonObj]:
        return [
            copy.deepcopy(p)
            for p in self.store.list_objects("pods", ns)
            if job is None or (p["metadata"].get("labels") or {}).get("job-name") == job
        ]

    def configmaps(self, ns: str | None = None) -> list[JsonObj]:
        return copy.deepcopy(self.store.list_objects("configmaps", ns))

    def duplicates(self, label_key: str) -> dict[str, int]:
        """Label values carried by more than one accepted Job create (deleted ones included)."""
        counts = Counter(
            str(labels[label_key])
            for job in self.created_jobs
            if label_key in (labels := job["metadata"].get("labels") or {})
        )
        return {value: n for value, n in counts.items() if n > 1}


__all__ = ["AutoLifecycle", "FakeKubernetes", "RequestRecord"]
