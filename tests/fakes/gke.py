"""A fake GKE API (container.googleapis.com v1) plus the two Compute reads caliban needs.

Serves, as an aiohttp app on 127.0.0.1, with Google's JSON shapes:

* ``/v1/projects/{p}/locations/{loc}/clusters`` list (``-`` = every location), get, create
  (returns a long-running ``Operation``; the cluster is PROVISIONING, then RUNNING), delete;
  ``.../clusters/{c}/nodePools``; ``/v1/projects/{p}/locations/{loc}/operations/{op}``.
  The legacy ``/v1/projects/{p}/zones/{z}/...`` form and ``v1beta1`` are served too.
* ``/compute/v1/projects/{p}/regions/{r}`` (region with ``quotas``) and
  ``/compute/v1/projects/{p}/zones/{z}/acceleratorTypes``, for a configurable Compute base URL.

Errors are google.rpc.Status JSON (``{"error": {"code", "message", "status"}}``); Compute
errors use Compute's older shape with an ``errors[]`` list. A cluster's ``endpoint`` and
``masterAuth.clusterCaCertificate`` point at an attached :class:`FakeKubernetes`, so production
code can go from "find the cluster" to "talk to its apiserver over verified TLS" unchanged.

Proto3 JSON details kept on purpose, because real responses have them: empty lists are omitted
(no clusters -> ``{}``), int64 fields are strings (``acceleratorCount``, resource limits'
``minimum``/``maximum``) and zero values are left out.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import secrets
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import discovery
from .gke_model import (
    DEFAULT_ACCELERATORS,
    DEFAULT_QUOTAS,
    REGION_RE,
    ZONE_RE,
    GoogleError,
    normalise_cluster,
    now_google,
    snake_to_camel,
)
from .google_http import RPC_CODES, STATUS_FOR_HTTP, FakeServer
from .k8s import FakeKubernetes, RequestRecord
from .k8s_store import JsonObj

TokenValidator = Callable[[str], bool | Awaitable[bool]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _Operation:
    body: JsonObj
    done_at: float
    on_done: Callable[[JsonObj | None], None]
    error: JsonObj | None = None


@dataclass
class _Fault:
    remaining: int
    status: int
    path_prefix: str | None
    method: str | None


class FakeGke(FakeServer):
    """Fake container.googleapis.com + the Compute quota/accelerator reads, one aiohttp app.

    Args:
        token / token_validator: the bearer token required (validator wins, may be async,
            e.g. ``FakeOAuth.valid_token``); both None disables auth.
        kubernetes: the FakeKubernetes that clusters' ``endpoint`` / CA point at (attach later
            with :meth:`attach`); it should be started with ``tls=True``.
        operation_delay: seconds a create/delete operation stays RUNNING.
        projects: if given, other projects get 403 PERMISSION_DENIED.
        reject_unknown_fields: 400 on unknown top-level Cluster fields, like the real API.
    """

    def __init__(
        self,
        *,
        token: str | None = "ya29.fake-gke-token",
        token_validator: TokenValidator | None = None,
        kubernetes: FakeKubernetes | None = None,
        operation_delay: float = 0.1,
        projects: set[str] | None = None,
        reject_unknown_fields: bool = True,
        master_version: str = "1.31.4-gke.1256000",
    ) -> None:
        super().__init__()
        self.token = token
        self.token_validator = token_validator
        self.kubernetes = kubernetes
        self.operation_delay = operation_delay
        self.projects = projects
        self.reject_unknown_fields = reject_unknown_fields
        self.master_version = master_version
        self.latency = 0.0
        self.clusters: dict[tuple[str, str, str], JsonObj] = {}  # (project, location, name)
        self.operations: dict[str, _Operation] = {}  # by operation name
        self.quotas: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
        self.region_zones: dict[str, list[str]] = {}
        self.accelerators: dict[str, dict[str, tuple[str, int]]] = {}  # by zone
        self.calls: Counter[str] = Counter()
        self.requests: list[RequestRecord] = []
        self.create_bodies: list[JsonObj] = []  # every accepted create request, as sent
        self._faults: list[_Fault] = []
        self._op_failures: list[tuple[str, str]] = []

    # lifecycle ---------------------------------------------------------------------------

    @property
    def compute_url(self) -> str:
        """Base URL standing in for https://compute.googleapis.com (same server)."""
        return self.url

    # seeding and knobs -------------------------------------------------------------------

    def attach(self, kubernetes: FakeKubernetes) -> None:
        """Point every cluster (existing and future) at ``kubernetes``."""
        self.kubernetes = kubernetes
        for cluster in self.clusters.values():
            if cluster["status"] == "RUNNING":
                self._connect(cluster)

    def add_cluster(
        self, project: str, location: str, name: str, *, status: str = "RUNNING", **fields: Any
    ) -> JsonObj:
        """Seed a cluster directly (no operation). ``fields`` are Cluster JSON fields, e.g.
        ``nodePools=[...]``, ``autoscaling={...}``, ``releaseChannel={"channel": "RAPID"}``."""
        cluster = self._normalise(project, location, {"name": name, **fields})
        cluster["status"] = status
        if status == "RUNNING":
            self._connect(cluster)
        self.clusters[(project, location, name)] = cluster
        return cluster

    def set_quota(
        self, project: str, region: str, metric: str, limit: float, usage: float = 0.0
    ) -> None:
        self.quotas.setdefault((project, region), {})[metric] = (limit, usage)

    def set_accelerator_types(self, zone: str, types: dict[str, int]) -> None:
        """Replace the accelerator catalogue of ``zone``: name -> maximumCardsPerInstance."""
        self.accelerators[zone] = {
            name: (DEFAULT_ACCELERATORS.get(name, (name, 0))[0], cards)
            for name, cards in types.items()
        }

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        path_prefix: str | None = None,
        *,
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (google.rpc.Status)."""
        self._faults.append(_Fault(n, status, path_prefix, method))

    def fail_next_operation(
        self,
        message: str = "Insufficient regional quota to satisfy "
        "request: resource \"CPUS\": request requires '12.0' and is short "
        "'4.0'.",
        status: str = "RESOURCE_EXHAUSTED",
    ) -> None:
        """The next create/delete operation ends DONE with ``error`` (cluster -> ERROR)."""
        self._op_failures.append((status, message))

    def complete_operations(self) -> None:
        """Finish every running operation now instead of after ``operation_delay``."""
        for op in self.operations.values():
            op.done_at = min(op.done_at, 0.0)
        self._advance()

    # HTTP plumbing -----------------------------------------------------------------------

    def build_app(self) -> web.Application:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            record = RequestRecord(request.method, request.path, dict(request.query))
            self.requests.append(record)
            compute = request.path.startswith("/compute/")
            try:
                await self._authenticate(request)
                if self.latency:
                    await asyncio.sleep(self.latency)
                for fault in self._faults:
                    if (
                        fault.remaining > 0
                        and (
                            fault.path_prefix is None or request.path.startswith(fault.path_prefix)
                        )
                        and (fault.method is None or fault.method.upper() == request.method)
                    ):
                        fault.remaining -= 1
                        raise self._fault(fault.status)
                project = request.match_info.get("project")
                if project and self.projects is not None and project not in self.projects:
                    raise GoogleError(
                        "PERMISSION_DENIED", f"Permission denied on resource project {project}."
                    )
                self._advance()
                response = await handler(request)
            except GoogleError as err:
                response = err.response(compute=compute)
            except web.HTTPException as err:
                status = STATUS_FOR_HTTP.get(err.status, "UNKNOWN")
                response = GoogleError(status, err.reason, http=err.status).response(
                    compute=compute
                )
            except ConnectionError:
                return web.Response()  # the client is gone (its timeout fired): nobody to answer
            record.status = response.status
            return response

        app = web.Application(middlewares=[middleware])
        add = app.router.add_route
        name = "{name:[^/:]+}"
        for version in ("v1", "v1beta1"):
            for scope in ("locations", "zones"):
                base = f"/{version}/projects/{{project}}/{scope}/{{location}}"
                add("GET", f"{base}/clusters", self._list_clusters)
                add("POST", f"{base}/clusters", self._create_cluster)
                add("GET", f"{base}/clusters/{name}", self._get_cluster)
                add("DELETE", f"{base}/clusters/{name}", self._delete_cluster)
                add("GET", f"{base}/clusters/{{cluster}}/nodePools", self._list_node_pools)
                add("POST", f"{base}/clusters/{{cluster}}/nodePools", self._create_node_pool)
                add("GET", f"{base}/clusters/{{cluster}}/nodePools/{name}", self._get_node_pool)
                add("GET", f"{base}/operations", self._list_operations)
                add("GET", f"{base}/operations/{name}", self._get_operation)
        add("GET", "/compute/v1/projects/{project}/regions/{region}", self._get_region)
        add(
            "GET",
            "/compute/v1/projects/{project}/zones/{zone}/acceleratorTypes",
            self._list_accelerator_types,
        )
        return app

    async def _authenticate(self, request: web.Request) -> None:
        if self.token is None and self.token_validator is None:
            return
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        ok = False
        if scheme.lower() == "bearer" and presented:
            if self.token_validator is not None:
                verdict = self.token_validator(presented)
                ok = bool(await verdict if inspect.isawaitable(verdict) else verdict)
            else:
                ok = presented == self.token
        if not ok:
            raise GoogleError(
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )

    @staticmethod
    def _fault(status: int) -> GoogleError:
        name = STATUS_FOR_HTTP.get(status, "UNKNOWN")
        details = None
        if status == 429:
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
        message = {
            429: "Quota exceeded for quota metric 'Read requests' and limit 'Read "
            "requests per minute' of service 'container.googleapis.com'.",
            503: "The service is currently unavailable.",
        }.get(status, f"fake GKE injected HTTP {status}")
        return GoogleError(name, message, http=status, details=details)

    # operations --------------------------------------------------------------------------

    def _start_operation(
        self,
        project: str,
        location: str,
        op_type: str,
        cluster: str,
        on_done: Callable[[JsonObj | None], None],
    ) -> JsonObj:
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(4)}"
        base = f"{self.url}/v1/projects/{project}/locations/{location}"
        body = {
            "name": name,
            "zone": location,
            "operationType": op_type,
            "status": "RUNNING",
            "selfLink": f"{base}/operations/{name}",
            "targetLink": f"{base}/clusters/{cluster}",
            "startTime": now_google(),
            "location": location,
        }
        op = _Operation(body, asyncio.get_running_loop().time() + self.operation_delay, on_done)
        if self._op_failures:
            status, message = self._op_failures.pop(0)
            op.error = {"code": RPC_CODES[status][1], "message": message}
        self.operations[name] = op
        return dict(body)

    def _advance(self) -> None:
        """Finish operations whose time has come (lazily, at each request: no timers)."""
        now = asyncio.get_running_loop().time()
        for op in self.operations.values():
            if op.body["status"] != "DONE" and op.done_at <= now:
                op.body["status"] = "DONE"
                op.body["endTime"] = now_google()
                if op.error is not None:
                    op.body["error"] = op.error
                    op.body["statusMessage"] = op.error["message"]
                op.on_done(op.error)

    async def _get_operation(self, request: web.Request) -> web.StreamResponse:
        self.calls["get operation"] += 1
        op = self.operations.get(request.match_info["name"])
        if op is None:
            raise GoogleError("NOT_FOUND", f"Not found: operation {request.match_info['name']}.")
        return web.json_response(op.body)

    async def _list_operations(self, request: web.Request) -> web.StreamResponse:
        loc = request.match_info["location"]
        ops = [op.body for op in self.operations.values() if loc in ("-", op.body["location"])]
        return web.json_response({"operations": ops} if ops else {})

    # clusters ----------------------------------------------------------------------------

    def _connect(self, cluster: JsonObj) -> None:
        """RUNNING clusters expose the attached apiserver's endpoint and CA."""
        kube = self.kubernetes
        if kube is None:
            cluster["endpoint"] = "127.0.0.1"
            return
        cluster["endpoint"] = kube.endpoint
        if kube.certs is not None:
            cluster["masterAuth"] = {
                "clusterCaCertificate": base64.b64encode(kube.ca_cert_pem.encode()).decode()
            }

    def _cluster(self, request: web.Request, name: str) -> JsonObj:
        project, loc = request.match_info["project"], request.match_info["location"]
        cluster = self.clusters.get((project, loc, name))
        if cluster is None:
            raise GoogleError(
                "NOT_FOUND", f"Not found: projects/{project}/locations/{loc}/clusters/{name}."
            )
        return cluster

    async def _list_clusters(self, request: web.Request) -> web.StreamResponse:
        self.calls["list clusters"] += 1
        project, loc = request.match_info["project"], request.match_info["location"]
        found = [
            c
            for (p, cl, _), c in sorted(self.clusters.items())
            if p == project and loc in ("-", cl)
        ]
        return web.json_response({"clusters": found} if found else {})

    async def _get_cluster(self, request: web.Request) -> web.StreamResponse:
        self.calls["get cluster"] += 1
        return web.json_response(self._cluster(request, request.match_info["name"]))

    async def _list_node_pools(self, request: web.Request) -> web.StreamResponse:
        pools = self._cluster(request, request.match_info["cluster"]).get("nodePools", [])
        return web.json_response({"nodePools": pools} if pools else {})

    async def _create_node_pool(self, request: web.Request) -> web.StreamResponse:
        self.calls["create node pool"] += 1
        project, loc = request.match_info["project"], request.match_info["location"]
        cluster = self._cluster(request, request.match_info["cluster"])
        try:
            body = await request.json()
        except ValueError:
            raise GoogleError("INVALID_ARGUMENT", "Invalid JSON payload received.") from None
        _check_discovery("projects.locations.clusters.nodePools.create", body)
        pool = dict(body["nodePool"])
        if any(p["name"] == pool.get("name") for p in cluster.get("nodePools", [])):
            raise GoogleError("ALREADY_EXISTS", f"Already exists: node pool {pool.get('name')}.")
        self.create_bodies.append(body)
        pool["status"] = "PROVISIONING"
        cluster.setdefault("nodePools", []).append(pool)

        def done(error: JsonObj | None) -> None:
            pool["status"] = "ERROR" if error is not None else "RUNNING"

        return web.json_response(
            self._start_operation(project, loc, "CREATE_NODE_POOL", cluster["name"], done)
        )

    async def _get_node_pool(self, request: web.Request) -> web.StreamResponse:
        cluster = self._cluster(request, request.match_info["cluster"])
        for pool in cluster.get("nodePools", []):
            if pool["name"] == request.match_info["name"]:
                return web.json_response(pool)
        raise GoogleError("NOT_FOUND", f"Not found: node pool {request.match_info['name']}.")

    async def _create_cluster(self, request: web.Request) -> web.StreamResponse:
        self.calls["create cluster"] += 1
        project, loc = request.match_info["project"], request.match_info["location"]
        if loc == "-":
            raise GoogleError("INVALID_ARGUMENT", 'Location "-" is not valid for create.')
        try:
            body = await request.json()
        except ValueError:
            raise GoogleError("INVALID_ARGUMENT", "Invalid JSON payload received.") from None
        if not isinstance(body, dict):
            raise GoogleError("INVALID_ARGUMENT", "Invalid JSON payload received.")
        for key in body:
            if snake_to_camel(key) not in ("cluster", "parent", "projectId", "zone"):
                raise GoogleError(
                    "INVALID_ARGUMENT",
                    f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.',
                )
        spec = body.get("cluster")
        if not isinstance(spec, dict):
            raise GoogleError(
                "INVALID_ARGUMENT",
                "Cluster.name must be provided."
                if spec is None
                else "Invalid JSON payload received. 'cluster' is not an object.",
            )
        _check_discovery("projects.locations.clusters.create", body)
        cluster = self._normalise(project, loc, spec)
        name = cluster["name"]
        if (project, loc, name) in self.clusters:
            raise GoogleError(
                "ALREADY_EXISTS",
                f"Already exists: projects/{project}/locations/{loc}/clusters/{name}.",
            )
        self.create_bodies.append(body)
        cluster["status"] = "PROVISIONING"
        for pool in cluster["nodePools"]:
            pool["status"] = "PROVISIONING"
        self.clusters[(project, loc, name)] = cluster

        def done(error: JsonObj | None) -> None:
            if error is not None:
                cluster.update(status="ERROR", statusMessage=error["message"])
                return
            cluster["status"] = "RUNNING"
            for pool in cluster["nodePools"]:
                pool["status"] = "RUNNING"
            self._connect(cluster)

        return web.json_response(self._start_operation(project, loc, "CREATE_CLUSTER", name, done))

    async def _delete_cluster(self, request: web.Request) -> web.StreamResponse:
        self.calls["delete cluster"] += 1
        project, loc = request.match_info["project"], request.match_info["location"]
        cluster = self._cluster(request, request.match_info["name"])
        if cluster["status"] in ("PROVISIONING", "STOPPING", "RECONCILING"):
            raise GoogleError(
                "FAILED_PRECONDITION",
                "Cluster is currently being created, "
                "deleted, updated or repaired and cannot be updated.",
            )
        cluster["status"] = "STOPPING"
        key = (project, loc, cluster["name"])

        def done(error: JsonObj | None) -> None:
            if error is not None:
                cluster.update(status="ERROR", statusMessage=error["message"])
            else:
                self.clusters.pop(key, None)

        return web.json_response(
            self._start_operation(project, loc, "DELETE_CLUSTER", cluster["name"], done)
        )

    def _normalise(self, project: str, location: str, raw: JsonObj) -> JsonObj:
        return normalise_cluster(
            project,
            location,
            raw,
            version=self.master_version,
            base_url=self.url if self._runner else "",
            reject_unknown_fields=self.reject_unknown_fields,
        )

    # compute -----------------------------------------------------------------------------

    async def _get_region(self, request: web.Request) -> web.StreamResponse:
        self.calls["get region"] += 1
        project, region = request.match_info["project"], request.match_info["region"]
        if not REGION_RE.fullmatch(region):
            raise GoogleError(
                "NOT_FOUND", f"The resource 'projects/{project}/regions/{region}' was not found"
            )
        base = f"{self.url}/compute/v1/projects/{project}"
        quotas = {m: (limit, 0.0) for m, limit in DEFAULT_QUOTAS.items()}
        quotas.update(self.quotas.get((project, region), {}))
        zones = self.region_zones.get(region) or [f"{region}-{s}" for s in "abcf"]
        return web.json_response(
            {
                "kind": "compute#region",
                "id": str(zlib.crc32(region.encode())),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
                "name": region,
                "description": region,
                "status": "UP",
                "zones": [f"{base}/zones/{z}" for z in zones],
                "quotas": [
                    {"metric": m, "limit": limit, "usage": usage}
                    for m, (limit, usage) in quotas.items()
                ],
                "selfLink": f"{base}/regions/{region}",
                "supportsPzs": False,
            }
        )

    async def _list_accelerator_types(self, request: web.Request) -> web.StreamResponse:
        self.calls["list acceleratorTypes"] += 1
        project, zone = request.match_info["project"], request.match_info["zone"]
        if not ZONE_RE.fullmatch(zone):
            raise GoogleError(
                "NOT_FOUND", f"The resource 'projects/{project}/zones/{zone}' was not found"
            )
        base = f"{self.url}/compute/v1/projects/{project}/zones/{zone}"
        catalogue = self.accelerators.get(zone, DEFAULT_ACCELERATORS)
        items = [
            {
                "kind": "compute#acceleratorType",
                "id": str(10000 + i),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
                "name": name,
                "description": description,
                "zone": base,
                "maximumCardsPerInstance": cards,
                "selfLink": f"{base}/acceleratorTypes/{name}",
            }
            for i, (name, (description, cards)) in enumerate(sorted(catalogue.items()))
        ]
        body: JsonObj = {
            "kind": "compute#acceleratorTypeList",
            "id": f"projects/{project}/zones/{zone}/acceleratorTypes",
            "selfLink": f"{base}/acceleratorTypes",
        }
        if items:
            body["items"] = items
        return web.json_response(body)


def _check_discovery(method: str, body: Any) -> None:
    """400 INVALID_ARGUMENT, as Google's front end answers, for a body container.v1's
    discovery document refuses."""
    doc = discovery.container()
    found = doc.check(doc.request_schema(method), body)
    if found:
        message, detail = discovery.bad_request(found)
        raise GoogleError("INVALID_ARGUMENT", message, details=[detail])


__all__ = ["DEFAULT_ACCELERATORS", "DEFAULT_QUOTAS", "FakeGke", "GoogleError"]
