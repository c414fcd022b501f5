"""A fake Cloud Logging API v2 ``entries.list``, speaking the real REST wire format.

Route (on the base URL the production client builds, ``CALIBAN_LOGGING_ENDPOINT``)::

    POST /v2/entries:list    ListLogEntriesRequest -> ListLogEntriesResponse

Every request body is checked against ``logging.v2``'s discovery document first (unknown
fields, wrong JSON types, a missing ``resourceNames``), as Google's front end would. The
filter is read for the part of the Logging query language Vertex job logs need:
``resource.type="ml_job"``, ``resource.labels.job_id="ID"`` or ``=("A" OR "B" ...)`` and
``timestamp`` comparisons, joined by ``AND``; anything else is refused with 400, so a client
that drifts from that shape fails loudly instead of silently matching everything.

Linked to a :class:`~tests.fakes.vertex.FakeVertex` (``vertex=``), every job created there gets
``entries_per_job`` entries; tests add their own with :meth:`FakeLogging.add`. Knobs:
``entries_per_job``, ``max_page_size`` (pages shorter than asked, to force page tokens),
:meth:`fail_next` (429 with Retry-After, 5xx), :meth:`deny` (403 PERMISSION_DENIED).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from . import discovery
from .google_http import FakeServer, error_for_http, error_info, format_duration, rpc_error
from .vertex import FakeVertex
from .vertex_jobs import FakeJob

PERMISSION = "logging.logEntries.list"
_REQUEST = discovery.logging_v2().request_schema("entries.list")
_CLAUSE = re.compile(
    r"^\s*(?P<field>resource\.type|resource\.labels\.job_id|timestamp)\s*"
    r'(?P<op>>=|<=|=|>|<)\s*(?P<value>"(?:[^"\\]|\\.)*"|\((?:[^()"]|"(?:[^"\\]|\\.)*")*\))\s*$'
)
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")


def nanos(stamp: str) -> int:
    """An RFC 3339 UTC timestamp as integer nanoseconds (what Logging orders by)."""
    m = _STAMP.match(stamp)
    if m is None:
        raise ValueError(stamp)
    whole = datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(whole.timestamp()) * 10**9 + int((m[2] or "0").ljust(9, "0"))


def stamp_of(ns: int) -> str:
    seconds, frac = divmod(ns, 10**9)
    whole = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{frac:09d}Z"


@dataclass
class FakeEntry:
    project: str  # project id
    project_number: str
    job_id: str  # numeric Vertex job id
    at: int  # nanoseconds since the epoch
    insert_id: str
    text: str
    severity: str = "INFO"

    def wire(self) -> dict[str, Any]:
        return {
            "insertId": self.insert_id,
            "logName": f"projects/{self.project}/logs/workerpool0-0",
            "resource": {
                "type": "ml_job",
                "labels": {
                    "job_id": self.job_id,
                    "project_id": self.project,
                    "task_name": "workerpool0-0",
                },
            },
            "textPayload": self.text,
            "timestamp": stamp_of(self.at),
            "receiveTimestamp": stamp_of(self.at + 1_000_000),
            "severity": self.severity,
        }


@dataclass
class ListCall:
    """One entries.list request as the fake saw it."""

    at: float  # clock() on arrival
    body: Any
    status: int = 200
    returned: int = 0


@dataclass
class _Fault:
    status: int
    retry_after: float | None


@dataclass
class _Query:
    job_ids: set[str] | None = None
    after: list[tuple[str, int]] = field(default_factory=list)


class FilterRefused(ValueError):
    pass


def parse_filter(text: str) -> _Query:
    """The subset of the Logging query language Vertex job logs use."""
    query = _Query()
    for clause in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        m = _CLAUSE.match(clause)
        if m is None:
            raise FilterRefused(f"unsupported filter clause: {clause!r}")
        values = [v.encode().decode("unicode_escape") for v in _STRING.findall(m["value"])]
        if m["value"].startswith("("):
            inner = m["value"][1:-1]
            if re.sub(_STRING, "", inner).replace("OR", "").strip():
                raise FilterRefused(f"unsupported filter clause: {clause!r}")
        if m["field"] == "resource.type":
            if m["op"] != "=" or values != ["ml_job"]:
                raise FilterRefused(f"this stand-in holds ml_job entries only: {clause!r}")
        elif m["field"] == "resource.labels.job_id":
            if m["op"] != "=" or not values:
                raise FilterRefused(f"unsupported filter clause: {clause!r}")
            query.job_ids = set(values) if query.job_ids is None else query.job_ids & set(values)
        else:
            if len(values) != 1 or m["value"].startswith("("):
                raise FilterRefused(f"a timestamp takes one value: {clause!r}")
            try:
                query.after.append((m["op"], nanos(values[0])))
            except ValueError:
                raise FilterRefused(f"invalid timestamp {values[0]!r}") from None
    return query


def _keep(entry: FakeEntry, query: _Query) -> bool:
    if query.job_ids is not None and entry.job_id not in query.job_ids:
        return False
    for op, ns in query.after:
        ok = {
            ">": entry.at > ns,
            ">=": entry.at >= ns,
            "<": entry.at < ns,
            "<=": entry.at <= ns,
            "=": entry.at == ns,
        }[op]
        if not ok:
            return False
    return True


class FakeLogging(FakeServer):
    """Cloud Logging ``entries.list`` on 127.0.0.1, with knobs and counters."""

    def __init__(
        self,
        *,
        vertex: FakeVertex | None = None,
        token_validator: Callable[[str], bool] | None = None,
        entries_per_job: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.token_validator = token_validator
        self.entries_per_job = entries_per_job
        self.max_page_size = 1000
        self.clock = clock
        self.calls: list[ListCall] = []
        self._entries: list[FakeEntry] = []
        self._faults: list[_Fault] = []
        self._denied: set[str] = set()
        self._next_ns = time.time_ns()
        self._numbers: dict[str, str] = {}
        if vertex is not None:
            vertex.on_create.append(self._created)

    # ----------------------------------------------------------------------- knobs
    def add(
        self, job: FakeJob | str, *lines: str, project: str = "", severity: str = "INFO"
    ) -> list[FakeEntry]:
        """Log ``lines`` (one entry each, in order) for a Vertex job (or its numeric id)."""
        if isinstance(job, FakeJob):
            project, number, job_id = job.project, job.project_number, job.job_id
            self._numbers[project] = number
        else:
            job_id, number = job, self._numbers.get(project, project)
        out = []
        for line in lines:
            self._next_ns += 1_000  # a microsecond apart, strictly increasing
            entry = FakeEntry(
                project, number, job_id, self._next_ns, f"e{len(self._entries):08d}", line, severity
            )
            self._entries.append(entry)
            out.append(entry)
        return out

    def fail_next(self, n: int = 1, status: int = 429, *, retry_after: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (429: RESOURCE_EXHAUSTED)."""
        self._faults.extend(_Fault(status, retry_after) for _ in range(n))

    def deny(self, project: str) -> None:
        """403 PERMISSION_DENIED on ``logging.logEntries.list`` for ``project`` (id or number)."""
        self._denied.add(project)

    def entries(self, job_id: str | None = None) -> list[FakeEntry]:
        return [e for e in self._entries if job_id is None or e.job_id == job_id]

    @property
    def accepted(self) -> list[ListCall]:
        return [c for c in self.calls if c.status == 200]

    def _created(self, job: FakeJob) -> None:
        if self.entries_per_job:
            self.add(job, *(f"line {i} of job {job.job_id}" for i in range(self.entries_per_job)))

    # ----------------------------------------------------------------------- the app
    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/entries:list", self._list)
        return app

    def _auth(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return rpc_error("UNAUTHENTICATED", "Request is missing required authentication.")
        if self.token_validator is not None and not self.token_validator(token.strip()):
            return rpc_error("UNAUTHENTICATED", "Request had invalid authentication credentials.")
        return None

    async def _list(self, request: web.Request) -> web.Response:
        call = ListCall(self.clock(), None)
        self.calls.append(call)
        response = await self._answer(request, call)
        call.status = response.status
        return response

    async def _answer(self, request: web.Request, call: ListCall) -> web.Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.read() or b"{}")
        except json.JSONDecodeError:
            return rpc_error("INVALID_ARGUMENT", "Invalid JSON payload received.")
        call.body = body
        found = discovery.logging_v2().check(_REQUEST, body)
        if found:
            message, detail = discovery.bad_request(found)
            return rpc_error("INVALID_ARGUMENT", message, details=[detail])
        if self._faults:
            fault = self._faults.pop(0)
            if fault.status != 429:
                return error_for_http(fault.status, "The service is currently unavailable.")
            details = [error_info("RATE_LIMIT_EXCEEDED", {"service": "logging.googleapis.com"})]
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = format_duration(fault.retry_after).rstrip("s")
                details.append(
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": format_duration(fault.retry_after),
                    }
                )
            return rpc_error(
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per "
                "minute' of service 'logging.googleapis.com'.",
                details=details,
                headers=headers,
            )
        projects = set()
        for name in body.get("resourceNames") or []:
            kind, _, project = str(name).partition("/")
            if kind != "projects" or not project or "/" in project:
                return rpc_error("INVALID_ARGUMENT", f"Invalid resource name: {name}")
            if project in self._denied or self._numbers.get(project) in self._denied:
                return rpc_error(
                    "PERMISSION_DENIED",
                    f"Permission '{PERMISSION}' denied on resource (or it may not exist).",
                    details=[error_info("IAM_PERMISSION_DENIED", {"permission": PERMISSION})],
                )
            projects.add(project)
        if not projects:
            return rpc_error("INVALID_ARGUMENT", "resource_names: at least one is required")
        order = body.get("orderBy") or "timestamp asc"
        if order not in ("timestamp asc", "timestamp desc"):
            return rpc_error("INVALID_ARGUMENT", f"Invalid order_by: {order}")
        try:
            query = parse_filter(str(body.get("filter") or ""))
        except FilterRefused as exc:
            return rpc_error("INVALID_ARGUMENT", f"Invalid filter: {exc}")
        size = int(body.get("pageSize") or 50)
        if size < 0:
            return rpc_error("INVALID_ARGUMENT", "page_size must not be negative")
        size = min(size or 50, self.max_page_size)
        # A page token is bound to the request it came from, as Google's are.
        key = hashlib.sha256(
            json.dumps(
                {k: v for k, v in body.items() if k not in ("pageToken", "pageSize")},
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        start = 0
        if body.get("pageToken"):
            try:
                token_key, offset = base64.urlsafe_b64decode(body["pageToken"]).decode().split(":")
                start = int(offset)
            except (ValueError, UnicodeDecodeError):
                return rpc_error("INVALID_ARGUMENT", "Invalid page token.")
            if token_key != key:
                return rpc_error("INVALID_ARGUMENT", "The page token does not match the request.")
        matched = [
            e
            for e in self._entries
            if (e.project in projects or e.project_number in projects) and _keep(e, query)
        ]
        matched.sort(key=lambda e: (e.at, e.insert_id), reverse=order == "timestamp desc")
        page = matched[start : start + size]
        call.returned = len(page)
        payload: dict[str, Any] = {"entries": [e.wire() for e in page]}
        if start + size < len(matched):
            payload["nextPageToken"] = base64.urlsafe_b64encode(
                f"{key}:{start + size}".encode()
            ).decode()
        return web.json_response(payload)
