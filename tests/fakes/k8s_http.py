"""REST surface of the fake apiserver: routes, auth, fault injection, and the handlers.

:class:`KubeApi` holds no state of its own beyond background deletions: it reads and writes the
:class:`~tests.fakes.k8s.FakeKubernetes` it serves (store, controller, counters, knobs), so a
test sees every effect on the fake object it made. Watches and log streams are in
:mod:`tests.fakes.k8s_stream`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import inspect
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .google_http import drop_connection
from .k8s_admission import (
    CONFIGMAPS,
    JOBS,
    NAMESPACES,
    PODS,
    default_job,
    generated_name,
    validate_job,
)
from .k8s_patch import patch_handler
from .k8s_schema import schema_causes
from .k8s_store import (
    Cause,
    FieldSelector,
    JsonObj,
    KubeError,
    LabelSelector,
    ResourceType,
    already_exists,
    bool_param,
    check_annotations,
    check_labels,
    check_name,
    int_param,
    invalid_error,
    invalid_value,
    new_uid,
    not_found,
    now_rfc3339,
    required_value,
    status_body,
    success_status,
)
from .k8s_stream import serve_pod_log, serve_watch

if TYPE_CHECKING:
    from .k8s import FakeKubernetes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TokenValidator = Callable[[str], bool | Awaitable[bool]]

_FAULT_STATUS: dict[int, tuple[str, str]] = {
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: fake apiserver injected failure"),
    502: ("InternalError", "Internal error occurred: bad gateway"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: (
        "Timeout",
        "the server was unable to return a response in the time allotted, but may "
        "still be processing the request",
    ),
}


def format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def strip_type(obj: JsonObj) -> JsonObj:
    """List items come without kind/apiVersion, as from a real apiserver."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


@dataclass
class RequestRecord:
    """One request as the fake saw it; ``status`` is None when the connection was dropped."""

    method: str
    path: str
    query: dict[str, str]
    status: int | None = None


@dataclass
class Fault:
    """A one-shot fault: the next ``remaining`` matching requests get it."""

    remaining: int
    status: int
    path_prefix: str | None
    method: str | None
    retry_after: float | None

    def matches(self, request: web.Request) -> bool:
        return (self.path_prefix is None or request.path.startswith(self.path_prefix)) and (
            self.method is None or request.method == self.method.upper()
        )


class Dropped(Exception):
    """The handler tore down the connection; nothing must be written."""


class KubeApi:
    """The aiohttp application of one :class:`FakeKubernetes`."""

    def __init__(self, kube: FakeKubernetes) -> None:
        self.kube = kube
        # Foreground deletions finishing in the background (the garbage collector's job).
        self.pending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self.pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pod_log(self, request: web.Request) -> web.StreamResponse:
        return await serve_pod_log(self.kube, request)

    # routing and guards -----------------------------------------------------------------------

    def build_app(self) -> web.Application:
        @web.middleware
        async def middleware(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            record = RequestRecord(request.method, request.path, dict(request.query))
            self.kube.requests.append(record)
            try:
                response = await self._guard(request, handler)
            except Dropped:
                return web.Response()  # aiohttp discards it: the transport is already closed
            except ConnectionError:
                # The client gave up (e.g. its timeout fired during a latency knob) before the
                # body was read: nothing was done, and there is nobody left to answer.
                return web.Response()
            record.status = response.status
            return response

        app = web.Application(middlewares=[middleware])
        jobs = "/apis/batch/v1/namespaces/{ns}/jobs"
        pods = "/api/v1/namespaces/{ns}/pods"
        cms = "/api/v1/namespaces/{ns}/configmaps"
        add = app.router.add_route
        for rtype, base, all_ns in (
            (JOBS, jobs, "/apis/batch/v1/jobs"),
            (PODS, pods, "/api/v1/pods"),
            (CONFIGMAPS, cms, "/api/v1/configmaps"),
        ):
            add("GET", base, self._collection_handler(rtype, namespaced=True))
            add("GET", all_ns, self._collection_handler(rtype, namespaced=False))
            add("DELETE", base, self._delete_collection_handler(rtype))
            add("GET", base + "/{name}", self._get_handler(rtype))
            add("DELETE", base + "/{name}", self._delete_handler(rtype))
        add("POST", jobs, self._create_handler(JOBS))
        add("POST", cms, self._create_handler(CONFIGMAPS))
        add("PATCH", cms + "/{name}", patch_handler(self, CONFIGMAPS))
        add("GET", jobs + "/{name}/status", self._get_handler(JOBS))
        add("GET", pods + "/{name}/status", self._get_handler(PODS))
        add("GET", pods + "/{name}/log", self._pod_log)
        add("GET", "/api/v1/namespaces", self._collection_handler(NAMESPACES, namespaced=False))
        add("GET", "/api/v1/namespaces/{name}", self._get_handler(NAMESPACES))
        # VersionApi.get_code requests "/version/" (trailing slash); kubectl uses "/version".
        add("GET", "/version", self._version)
        add("GET", "/version/", self._version)
        return app

    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Auth, latency and injected failures around every handler; errors as Status."""
        try:
            await self._authenticate(request)
            if self.kube.latency:
                await asyncio.sleep(self.kube.latency)
            for fault in self.kube.pending_faults:
                if fault.remaining > 0 and fault.matches(request):
                    fault.remaining -= 1
                    raise self._fault_error(fault.status, fault.retry_after)
            # POSTs are creates: their handler applies drops itself, after counting the
            # request as received (a drop loses the request, it does not prevent it).
            if request.method != "POST":
                self._maybe_drop(request)
            return await handler(request)
        except KubeError as err:
            return web.json_response(err.body, status=err.code, headers=err.headers)
        except web.HTTPNotFound:
            return web.json_response(
                status_body(
                    404, "NotFound", "the server could not find the requested resource", {}
                ),
                status=404,
            )
        except web.HTTPMethodNotAllowed as err:
            return web.json_response(
                status_body(
                    405,
                    "MethodNotAllowed",
                    f"the server does not allow this method on the requested resource "
                    f"({request.method} {request.path})",
                    {},
                ),
                status=405,
                headers=err.headers,
            )

    async def _authenticate(self, request: web.Request) -> None:
        if self.kube.token is None and self.kube.token_validator is None:
            return
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        ok = False
        if scheme.lower() == "bearer" and presented:
            if self.kube.token_validator is not None:
                verdict = self.kube.token_validator(presented)
                ok = bool(await verdict if inspect.isawaitable(verdict) else verdict)
            else:
                ok = presented == self.kube.token
        if not ok:
            raise KubeError.of(401, "Unauthorized", "Unauthorized")

    def _fault_error(self, status: int, retry_after: float | None = None) -> KubeError:
        reason, message = _FAULT_STATUS.get(status, ("Unknown", f"fake injected HTTP {status}"))
        details: JsonObj | None = None
        headers: dict[str, str] = {}
        if status == 429 and retry_after is not None:
            details = {"retryAfterSeconds": max(1, math.ceil(retry_after))}
            headers["Retry-After"] = format_seconds(retry_after)
        elif status == 500:
            details = {"causes": [{"message": "fake apiserver injected failure"}]}
        return KubeError(status, status_body(status, reason, message, details), headers)

    def _maybe_drop(self, request: web.Request) -> None:
        for drop in self.kube.pending_drops:
            if drop.remaining > 0 and drop.matches(request):
                drop.remaining -= 1
                self._drop(request)

    def _drop(self, request: web.Request) -> None:
        """Tear the connection down without a byte of response, then unwind the handler.

        "close" sends FIN (aiohttp clients raise ServerDisconnectedError); "reset" sets
        SO_LINGER 0 first so the kernel sends RST (ClientOSError ECONNRESET).
        """
        drop_connection(request, self.kube.disconnect_style)
        raise Dropped

    # handlers ----------------------------------------------------------------------------

    def _namespace(self, request: web.Request) -> str:
        ns = request.match_info["ns"]
        if self.kube.store.get("namespaces", "", ns) is None:
            raise not_found("namespaces", "", ns)
        return ns

    def _get_handler(
        self, rtype: ResourceType
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.kube.calls[f"get {rtype.resource}"] += 1
            ns = "" if rtype is NAMESPACES else request.match_info["ns"]
            obj = self.kube.store.require(rtype, ns, request.match_info["name"])
            return web.json_response(obj)

        return handler

    def _collection_handler(
        self, rtype: ResourceType, *, namespaced: bool
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            query = request.query
            ns = request.match_info["ns"] if namespaced else None
            labels = LabelSelector.parse(query.get("labelSelector"))
            fields = FieldSelector.parse(query.get("fieldSelector"), rtype.field_paths)
            if bool_param(query.get("watch")):
                self.kube.calls[f"watch {rtype.resource}"] += 1
                self.kube.watch_calls += rtype is JOBS
                return await serve_watch(self.kube, request, rtype, ns, labels, fields)
            self.kube.calls[f"list {rtype.resource}"] += 1
            self.kube.list_calls += rtype is JOBS
            return web.json_response(self._list_body(rtype, ns, labels, fields, query))

        return handler

    def _list_body(
        self,
        rtype: ResourceType,
        ns: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        query: Any,
    ) -> JsonObj:
        def key(obj: JsonObj) -> str:
            return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"

        items = [
            o
            for o in self.kube.store.list_objects(rtype.resource, ns)
            if labels.matches(o["metadata"].get("labels")) and fields.matches(o)
        ]
        rv = self.kube.store.rv
        meta: JsonObj = {}
        if token := query.get("continue"):
            try:
                state = json.loads(base64.b64decode(token, validate=True))
                rv, start = int(state["rv"]), str(state["start"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise KubeError.of(
                    400, "BadRequest", f"continue key is not valid: {token!r}"
                ) from None
            items = [o for o in items if key(o) > start]
        limit = int_param(query, "limit")
        if limit and limit > 0 and len(items) > limit:
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            meta["continue"] = base64.b64encode(
                json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": key(items[-1])}).encode()
            ).decode()
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(rv), **meta},
            "items": [strip_type(o) for o in items],
        }

    def _create_handler(
        self, rtype: ResourceType
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            kube = self.kube
            kube.calls[f"create {rtype.resource}"] += 1
            is_job = rtype is JOBS
            kube.creates_received += is_job
            # Faults that lose the request happen before anything is stored...
            if kube.create_latency:
                await asyncio.sleep(kube.create_latency)
            self._maybe_drop(request)
            if kube.drop_rate and kube.rng.random() < kube.drop_rate:
                self._drop(request)
            if kube.error_rate and kube.rng.random() < kube.error_rate:
                raise self._fault_error(kube.error_status)
            ns = self._namespace(request)
            obj = await self._read_object(request, rtype, ns)
            meta = obj["metadata"]
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = generated_name(str(meta["generateName"]))
            name = str(meta.get("name") or "")
            causes = self._validate(rtype, obj)
            if causes:
                raise invalid_error(rtype.kind, rtype.group, name, causes)
            if kube.store.get(rtype.resource, ns, name) is not None:
                kube.conflicts += is_job
                raise already_exists(rtype.resource, rtype.group, name)
            meta.update(namespace=ns, uid=new_uid(), creationTimestamp=now_rfc3339())
            if is_job:
                meta["generation"] = 1
                default_job(obj)
            else:
                obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
            if request.query.get("dryRun") == "All":
                return web.json_response(obj, status=201)
            snapshot = kube.store.insert(rtype.resource, obj)
            kube.object_order.append((rtype.kind, name))
            if is_job:
                kube.creates_accepted += 1
                kube.created_jobs.append(copy.deepcopy(snapshot))
                kube.controller.job_created(obj)
            # ...and the lost response after: the object exists, the client never hears so.
            lost = kube.lost_response_rate and kube.rng.random() < kube.lost_response_rate
            if kube.pending_lost or lost:
                kube.pending_lost = max(0, kube.pending_lost - 1)
                self._drop(request)
            return web.json_response(snapshot, status=201)

        return handler

    async def _read_object(self, request: web.Request, rtype: ResourceType, ns: str) -> JsonObj:
        try:
            obj = json.loads(await request.read() or b"null")
        except ValueError as err:
            raise KubeError.of(
                400,
                "BadRequest",
                f"the object provided is unrecognized (must be of type {rtype.kind}): {err}",
            ) from None
        if not isinstance(obj, dict):
            raise KubeError.of(
                400,
                "BadRequest",
                f"the object provided is unrecognized (must be "
                f"of type {rtype.kind}): couldn't get version/kind",
            )
        if obj.get("apiVersion", rtype.api_version) != rtype.api_version:
            raise KubeError.of(
                400,
                "BadRequest",
                f"the API version in the data "
                f"({obj['apiVersion']}) does not match the expected API version "
                f"({rtype.api_version})",
            )
        if obj.get("kind", rtype.kind) != rtype.kind:
            raise KubeError.of(
                400,
                "BadRequest",
                f"the kind in the data ({obj['kind']}) does "
                f"not match the expected kind ({rtype.kind})",
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise KubeError.of(400, "BadRequest", "metadata must be an object")
        if meta.get("namespace", ns) != ns:
            raise KubeError.of(
                400,
                "BadRequest",
                "the namespace of the provided object does not "
                "match the namespace sent on the request",
            )
        # Server-owned fields a client might echo back are ignored, as on a real create.
        for key in (
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "selfLink",
        ):
            meta.pop(key, None)
        if rtype is JOBS:
            obj["status"] = {}
        return obj

    def _validate(self, rtype: ResourceType, obj: JsonObj) -> list[Cause]:
        meta = obj["metadata"]
        name = meta.get("name")
        causes: list[Cause] = []
        if not name:
            causes.append(required_value("metadata.name", "name or generateName is required"))
        else:
            causes += check_name(str(name), "metadata.name", rtype.name_max)
        causes += check_labels(meta.get("labels"), "metadata.labels")
        causes += check_annotations(meta.get("annotations"), "metadata.annotations")
        if rtype is JOBS:
            causes += validate_job(obj)
        elif rtype is CONFIGMAPS:
            size = 0
            for section in ("data", "binaryData"):
                for key, value in (obj.get(section) or {}).items():
                    if (
                        not isinstance(key, str)
                        or not key
                        or len(key) > 253
                        or not all(c.isalnum() or c in "-._" for c in key)
                    ):
                        causes.append(
                            invalid_value(
                                f"{section}[{key}]",
                                key,
                                "a valid config key must consist of "
                                "alphanumeric characters, '-', '_' or '.'",
                            )
                        )
                    if section == "data" and not isinstance(value, str):
                        causes.append(invalid_value(f"data[{key}]", str(value), "must be a string"))
                    size += len(str(key)) + len(str(value))
            if size > 1024 * 1024:
                causes.append(
                    Cause("[]", "FieldValueTooLong", "Too long: must have at most 1048576 bytes")
                )
        return causes + self._schema_causes(rtype, obj, causes)

    def _schema_causes(self, rtype: ResourceType, obj: JsonObj, known: list[Cause]) -> list[Cause]:
        # The endpoint says what the object is; clients may leave apiVersion/kind out.
        typed = {**obj, "apiVersion": rtype.api_version, "kind": rtype.kind}
        seen = {c.field for c in known}
        if not self.kube.validate_schemas:
            return []
        return [c for c in schema_causes(typed, self.kube.minor) if c.field not in seen]

    async def _delete_options(self, request: web.Request) -> JsonObj:
        # Like the apiserver: a non-empty body is the whole DeleteOptions and the query is
        # then ignored (so body={} silently drops ?propagationPolicy=...); no body -> query.
        raw = await request.read()
        if raw.strip():
            try:
                options = json.loads(raw)
            except ValueError:
                raise KubeError.of(400, "BadRequest", "invalid DeleteOptions body") from None
            return options if isinstance(options, dict) else {}
        return {
            k: v
            for k, v in request.query.items()
            if k in ("propagationPolicy", "orphanDependents", "gracePeriodSeconds")
        }

    def _delete_handler(
        self, rtype: ResourceType
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            ns = request.match_info["ns"]
            options = await self._delete_options(request)
            obj = self.kube.store.require(rtype, ns, request.match_info["name"])
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
                raise KubeError.of(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: "
                    f"{pre['uid']}, UID in object meta: {obj['metadata']['uid']}",
                )
            status, body = self._delete(rtype, obj, options)
            return web.json_response(body, status=status)

        return handler

    def _delete_collection_handler(
        self, rtype: ResourceType
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            ns = self._namespace(request)
            options = await self._delete_options(request)
            labels = LabelSelector.parse(request.query.get("labelSelector"))
            fields = FieldSelector.parse(request.query.get("fieldSelector"), rtype.field_paths)
            victims = [
                o
                for o in self.kube.store.list_objects(rtype.resource, ns)
                if labels.matches(o["metadata"].get("labels")) and fields.matches(o)
            ]
            deleted = []
            for obj in list(victims):
                self._delete(rtype, obj, options)
                deleted.append(strip_type(obj))
            return web.json_response(
                {
                    "kind": rtype.list_kind,
                    "apiVersion": rtype.api_version,
                    "metadata": {"resourceVersion": str(self.kube.store.rv)},
                    "items": deleted,
                }
            )

        return handler

    def _delete(self, rtype: ResourceType, obj: JsonObj, options: JsonObj) -> tuple[int, JsonObj]:
        """Delete one object; returns (HTTP status, response body)."""
        meta = obj["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        self.kube.calls[f"delete {rtype.resource}"] += 1
        if rtype is PODS:
            meta["deletionTimestamp"] = now_rfc3339()
            meta["deletionGracePeriodSeconds"] = 0
            gone = self.kube.store.remove("pods", ns, name)
            assert gone is not None
            self.kube.controller.pod_removed(gone)
            self.kube.logs.notify()
            return 200, gone
        if rtype is not JOBS:
            self.kube.store.remove(rtype.resource, ns, name)
            return 200, success_status(name, rtype.group, rtype.resource, uid)
        self.kube.deletes += 1
        policy = options.get("propagationPolicy")
        if policy is None and "orphanDependents" in options:
            orphan = options["orphanDependents"]
            policy = "Orphan" if orphan in (True, "true", "True", "1") else "Background"
        # batch/v1 Jobs default to orphaning their pods (the apiserver only warns about it).
        policy = policy or "Orphan"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise KubeError.of(
                422,
                "Invalid",
                f'DeleteOptions.meta.k8s.io "" is invalid: '
                f'propagationPolicy: Unsupported value: "{policy}"',
            )
        if meta.get("deletionTimestamp"):
            return 200, copy.deepcopy(obj)  # already being deleted in the foreground
        if policy == "Foreground":
            with self.kube.store.modify("jobs", ns, name) as live:
                live["metadata"].update(
                    deletionTimestamp=now_rfc3339(),
                    deletionGracePeriodSeconds=0,
                    finalizers=[*live["metadata"].get("finalizers", []), "foregroundDeletion"],
                )
            task = asyncio.get_running_loop().create_task(self._finish_foreground(ns, name, uid))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            return 200, copy.deepcopy(obj)
        pods = self.kube.controller.pods_of(obj)
        self.kube.store.remove("jobs", ns, name)
        self.kube.controller.forget(obj)
        for pod in pods:
            pmeta = pod["metadata"]
            if policy == "Background":
                self.kube.store.remove("pods", ns, pmeta["name"])
            else:
                with self.kube.store.modify("pods", ns, pmeta["name"]) as live:
                    live["metadata"].pop("ownerReferences", None)
        self.kube.logs.notify()
        return 200, success_status(name, "batch", "jobs", uid)

    async def _finish_foreground(self, ns: str, name: str, uid: str) -> None:
        """The garbage collector's part: dependents first, then the Job itself."""
        await asyncio.sleep(self.kube.foreground_delay)
        job = self.kube.store.get("jobs", ns, name)
        if job is None or job["metadata"]["uid"] != uid:
            return
        for pod in self.kube.controller.pods_of(job):
            self.kube.store.remove("pods", ns, pod["metadata"]["name"])
        with self.kube.store.modify("jobs", ns, name) as live:
            live["metadata"]["finalizers"] = [
                f for f in live["metadata"].get("finalizers", []) if f != "foregroundDeletion"
            ]
            if not live["metadata"]["finalizers"]:
                del live["metadata"]["finalizers"]
        self.kube.store.remove("jobs", ns, name)
        self.kube.controller.forget(job)
        self.kube.logs.notify()

    async def _version(self, request: web.Request) -> web.StreamResponse:
        major, minor = self.kube.git_version.lstrip("v").split(".")[:2]
        return web.json_response(
            {
                "major": major,
                "minor": minor,
                "gitVersion": self.kube.git_version,
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.23.4",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )
