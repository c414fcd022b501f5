"""A fake Vertex AI v1 CustomJob service speaking the real REST wire format.

Routes (all under ``/v1``, the path the production client builds on its base URL)::

    POST   /v1/projects/{p}/locations/{l}/customJobs             create -> CustomJob
    GET    /v1/projects/{p}/locations/{l}/customJobs             list -> {customJobs, nextPageToken}
    GET    /v1/projects/{p}/locations/{l}/customJobs/{id}        get    -> CustomJob
    POST   /v1/projects/{p}/locations/{l}/customJobs/{id}:cancel cancel -> {}
    DELETE /v1/projects/{p}/locations/{l}/customJobs/{id}        delete -> Operation

The job-id segment is matched by ``[^/:]+`` so ``{id}:cancel`` is not swallowed by the get route.

Fault injection is what the fake exists for: latency, a sliding-window create quota answered
with 429 (``Retry-After`` and/or ``RetryInfo``), random 503s, connections dropped before the job
is created, and responses lost after it was created. Random faults draw from one
``random.Random(seed)``, so a sequential test is reproducible.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from aiohttp import web

from . import discovery
from .google_http import (
    DisconnectStyle,
    FakeServer,
    drop_connection,
    error_for_http,
    error_info,
    format_duration,
    rpc_error,
)
from .vertex_filter import FilterError, compile_filter, page_token, read_page_token
from .vertex_jobs import CANCELLED, CANCELLING, QUEUED, FakeJob, Lifecycle
from .vertex_schema import (
    CUSTOM_JOB,
    JOB_STATES,
    SchemaError,
    bad_request_detail,
    parse,
    validate,
    violations_message,
)

LostStyle = Literal["close", "reset", "partial"]
Op = Literal["create", "get", "list", "cancel", "delete"]

PERMISSIONS: dict[str, str] = {
    "create": "aiplatform.customJobs.create",
    "get": "aiplatform.customJobs.get",
    "list": "aiplatform.customJobs.list",
    "cancel": "aiplatform.customJobs.cancel",
    "delete": "aiplatform.customJobs.delete",
}
_PKG = "type.googleapis.com/google.cloud.aiplatform.v1."
_CUSTOM_JOB_SCHEMA = discovery.aiplatform().request_schema("projects.locations.customJobs.create")
_JOBS = "/v1/projects/{project}/locations/{location}/customJobs"
_JOB = _JOBS + "/{job_id:[^/:]+}"
# Query parameters every Google API accepts besides the method's own (system parameters).
_SYSTEM_PARAMS = {"alt", "$alt", "key", "prettyPrint", "fields", "quotaUser", "callback"}
# gcloud's own OAuth client lives in this Google project; user tokens minted through it
# are billed there unless the caller names a quota project.
GCLOUD_CLIENT_PROJECT = "764086051850"
_QUOTA_PROJECT_HELP = (
    "Your application is authenticating by using local Application Default Credentials. "
    "The aiplatform.googleapis.com API requires a quota project, which is not set by default. "
    "To learn how to set your quota project, see "
    "https://cloud.google.com/docs/authentication/adc-troubleshooting/user-creds ."
)
_UNAUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
COUNTERS = (
    "creates_received",
    "creates_accepted",
    "rejected_429",
    "rejected_5xx",
    "rejected_invalid",
    "rejected_other",
    "unauthenticated",
    "permission_denied",
    "dropped",
    "lost_responses",
    "list_calls",
    "get_calls",
    "cancel_calls",
    "delete_calls",
)
_DISK_DEFAULT = {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100}


@dataclass
class CreateAttempt:
    """One create request as the fake saw it (for pacing and outcome assertions)."""

    at: float  # clock() when the request arrived
    project: str
    location: str
    outcome: str = "pending"  # accepted|lost|dropped|429|5xx|invalid|unauthenticated|denied|<http>
    name: str | None = None  # the job created, for accepted and lost


@dataclass
class _Scripted:
    kind: Literal["error", "drop", "lost"]
    status: int = 503
    retry_after: float | None = None


class FakeVertex(FakeServer):
    """Vertex AI CustomJob API on 127.0.0.1 with fault knobs and assertion helpers.

    Args:
        token_validator: called with each bearer token; False -> 401. None accepts any
            non-empty bearer (pass ``oauth.valid_token`` to tie it to :class:`FakeOAuth`).
        project_number: the number put in job names whatever project id the URL used.
        project_numbers: per-project-id numbers, when a test needs several projects.
        seed: seeds the random fault knobs and the job ids.
        clock: monotonic clock for quotas and the lifecycle (inject one for determinism).
        initial_state: the state a new job is created in (QUEUED or PENDING in practice).
        lifecycle: automatic state progression (None: jobs move only by ``advance``/``fail``).
        default_page_size / max_page_size: list paging.
        check_machine_accelerator: refuse accelerator types the machine family cannot carry.

    Knobs (plain attributes, set them per test): ``create_latency``, ``get_latency``,
    ``list_latency``, ``cancel_latency``, ``quota_per_minute``, ``crud_quota_per_minute``,
    ``quota_window``, ``retry_after_header``, ``retry_info_detail``, ``error_rate_5xx``,
    ``drop_rate``, ``drop_style``, ``lost_response_rate``, ``lost_style``, ``cancel_delay``,
    ``cancel_outcome``, ``lifecycle``, ``user_tokens`` (user credentials need a quota
    project). Scripted faults: :meth:`fail_next`, :meth:`fail_next_creates`,
    :meth:`drop_next_creates`, :meth:`lose_next_creates`; permissions: :meth:`deny`.
    """

    def __init__(
        self,
        *,
        token_validator: Callable[[str], bool] | None = None,
        project_number: str = "123456789012",
        project_numbers: Mapping[str, str] | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        initial_state: str = QUEUED,
        lifecycle: Lifecycle | None = None,
        default_page_size: int = 100,
        max_page_size: int = 1000,
        check_machine_accelerator: bool = True,
    ) -> None:
        super().__init__()
        if initial_state not in JOB_STATES:
            raise ValueError(f"unknown job state {initial_state!r}")
        self.token_validator = token_validator
        self.project_number = project_number
        self.project_numbers = dict(project_numbers or {})
        self.clock = clock
        self.initial_state = initial_state
        self.lifecycle = lifecycle
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.check_machine_accelerator = check_machine_accelerator
        # --- knobs
        self.create_latency = 0.0
        self.get_latency = 0.0
        self.list_latency = 0.0
        self.cancel_latency = 0.0
        self.quota_per_minute: int | None = None  # creates per (project, location) per window
        self.crud_quota_per_minute: int | None = None  # get/list/cancel/delete per window
        self.quota_window = 60.0  # seconds; shrink it to keep quota tests fast
        self.retry_after_header = True
        self.retry_info_detail = True
        self.error_rate_5xx = 0.0
        self.drop_rate = 0.0
        self.drop_style: DisconnectStyle = "close"
        self.lost_response_rate = 0.0
        self.lost_style: LostStyle = "close"
        # Vertex cancels asynchronously: a cancelled job is CANCELLING for cancel_delay
        # (clock seconds), then ends cancel_outcome; SUCCEEDED or FAILED model a job that
        # finished before the cancel took effect.
        self.cancel_delay = 0.0
        self.cancel_outcome = CANCELLED
        # Capacity per place: (location, strategy) -> the lifecycle its jobs follow, with
        # (location, "*") for every strategy there. A region without capacity is a
        # Lifecycle(pending=math.inf); flex-start expiry, stockouts and Spot preemption are
        # the Lifecycle's waiting_outcome / outcome (see capacity_lifecycle()).
        self.capacity: dict[tuple[str, str], Lifecycle | Callable[[FakeJob], Lifecycle]] = {}
        # Tells a person's token from a service's (FakeOAuth.is_user_token); when set, user
        # tokens without an x-goog-user-project header get Google's 403.
        self.user_tokens: Callable[[str], bool] | None = None
        # --- counters
        self.quota_projects: list[str | None] = []  # x-goog-user-project of each request
        self.creates_received = 0
        self.creates_accepted = 0
        self.rejected_429 = 0
        self.rejected_5xx = 0
        self.rejected_invalid = 0
        self.rejected_other = 0
        self.unauthenticated = 0
        self.permission_denied = 0
        self.dropped = 0
        self.lost_responses = 0
        self.list_calls = 0
        self.get_calls = 0
        self.cancel_calls = 0
        self.delete_calls = 0
        self.create_log: list[CreateAttempt] = []
        # Requests held in a latency sleep at once, now and at most, per kind and in all
        # ("any"): concurrency is proven by overlap, not by a stopwatch.
        self.inflight: dict[str, int] = {}
        self.peak_inflight: dict[str, int] = {}
        # --- state
        self._rng = random.Random(seed)
        self._id_rng = random.Random(seed + 1)  # separate, so ids never shift fault draws
        self._jobs: list[FakeJob] = []
        self._by_id: dict[str, FakeJob] = {}
        self._scripted: dict[str, list[_Scripted]] = {}
        self._denied: dict[str, set[str]] = {}
        self._windows: dict[tuple[str, str, str], deque[float]] = {}
        # Called with each job created (FakeLogging gives it log entries).
        self.on_create: list[Callable[[FakeJob], None]] = []

    # ------------------------------------------------------------------ scripted faults
    def fail_next(
        self, op: Op, n: int = 1, status: int = 503, *, retry_after: float | None = None
    ) -> None:
        """Answer the next ``n`` ``op`` requests with a google.rpc.Status error ``status``.

        For 429 with ``retry_after`` the answer carries Retry-After / RetryInfo (per the
        ``retry_after_header`` / ``retry_info_detail`` knobs); without it, only code, message
        and status, like the GPU-quota 429s seen in the wild.
        """
        self._scripted.setdefault(op, []).extend(
            _Scripted("error", status, retry_after) for _ in range(n)
        )

    def fail_next_creates(
        self, n: int = 1, status: int = 503, *, retry_after: float | None = None
    ) -> None:
        """Shorthand for ``fail_next("create", ...)``: nothing is created."""
        self.fail_next("create", n, status, retry_after=retry_after)

    def drop_next_creates(self, n: int = 1) -> None:
        """Drop the connection of the next ``n`` creates before the job is created."""
        self._scripted.setdefault("create", []).extend(_Scripted("drop") for _ in range(n))

    def lose_next_creates(self, n: int = 1) -> None:
        """Create the next ``n`` jobs, then drop the connection instead of answering."""
        self._scripted.setdefault("create", []).extend(_Scripted("lost") for _ in range(n))

    def deny(self, project: str, *permissions: str) -> None:
        """Answer 403 for ``project`` (id or number): these permissions, or all if none given.

        Permissions are IAM names like ``aiplatform.customJobs.create``.
        """
        self._denied.setdefault(project, set()).update(permissions or PERMISSIONS.values())

    def allow(self, project: str) -> None:
        """Undo :meth:`deny` for ``project``."""
        self._denied.pop(project, None)

    # --------------------------------------------------------------- lifecycle control
    def advance(self, name: str | None = None, to: str = "JOB_STATE_RUNNING") -> list[FakeJob]:
        """Move one job (by name or id), or every live non-terminal job, to state ``to``.

        The automatic lifecycle stops applying to the jobs moved. Returns them.
        """
        if to not in JOB_STATES:
            raise ValueError(f"unknown job state {to!r}")
        now = self.clock()
        targets = [self.job(name)] if name else [j for j in self.jobs if not j.terminal]
        for job in targets:
            if not job.deleted:
                job.manual = True
                job.set_state(to, now)
        return targets

    def fail(self, name: str, code: int = 8, message: str = "Resources exhausted.") -> FakeJob:
        """End a job FAILED with ``error = {"code": code, "message": message}`` (proto Status)."""
        job = self.job(name)
        job.manual = True
        job.set_state("JOB_STATE_FAILED", self.clock(), {"code": code, "message": message})
        return job

    def lifecycle_of(self, job: FakeJob) -> Lifecycle | None:
        """The lifecycle ``job`` follows: its place's capacity, else ``lifecycle``."""
        strategy = str(job.spec.get("jobSpec", {}).get("scheduling", {}).get("strategy") or "")
        for key in ((job.location, strategy or "STANDARD"), (job.location, "*")):
            found = self.capacity.get(key)
            if found is not None:
                return found(job) if callable(found) else found
        return self.lifecycle

    # ------------------------------------------------------------------- observability
    @property
    def jobs(self) -> list[FakeJob]:
        """Every job ever created (deleted ones too), in creation order, states up to date."""
        now = self.clock()
        for job in self._jobs:
            job.tick(now, self.lifecycle_of(job), self.cancel_delay, self.cancel_outcome)
        return list(self._jobs)

    def job(self, name: str) -> FakeJob:
        """A job by full resource name (project id or number) or by numeric id."""
        job = self._by_id.get(name.rsplit("/", 1)[-1])
        if job is None:
            raise KeyError(name)
        job.tick(self.clock(), self.lifecycle_of(job), self.cancel_delay, self.cancel_outcome)
        return job

    def jobs_with_label(self, key: str, value: str) -> list[FakeJob]:
        """Jobs whose label ``key`` equals ``value``."""
        return [j for j in self.jobs if j.labels.get(key) == value]

    def duplicates(self, label_key: str) -> dict[str, list[FakeJob]]:
        """Label values of ``label_key`` carried by more than one created job."""
        groups: dict[str, list[FakeJob]] = {}
        for job in self.jobs:
            if label_key in job.labels:
                groups.setdefault(job.labels[label_key], []).append(job)
        return {value: jobs for value, jobs in groups.items() if len(jobs) > 1}

    def counters(self) -> dict[str, int]:
        """A snapshot of all counters (handy for benchmark JSON)."""
        return {name: int(getattr(self, name)) for name in COUNTERS}

    # ----------------------------------------------------------------------- the app
    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post(_JOBS, self._create)
        app.router.add_get(_JOBS, self._list)
        app.router.add_post(_JOB + ":cancel", self._cancel)
        app.router.add_get(_JOB, self._get)
        app.router.add_delete(_JOB, self._delete)
        return app

    def _number(self, project: str) -> str:
        return (
            project if project.isdigit() else self.project_numbers.get(project, self.project_number)
        )

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _gate(self, request: web.Request, op: Op, resource: str) -> web.Response | None:
        """Authentication, IAM and the CRUD quota, in the order Google applies them."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            self.unauthenticated += 1
            return rpc_error(
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. " + _UNAUTH_HELP,
                details=[error_info("CREDENTIALS_MISSING", {"method": op})],
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        if self.token_validator is not None and not self.token_validator(token.strip()):
            self.unauthenticated += 1
            return rpc_error(
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. " + _UNAUTH_HELP,
                details=[error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", {"method": op})],
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                    'error="invalid_token"'
                },
            )
        quota_project = request.headers.get("x-goog-user-project")
        self.quota_projects.append(quota_project)
        if self.user_tokens is not None and not quota_project and self.user_tokens(token.strip()):
            self.permission_denied += 1
            return rpc_error(
                "PERMISSION_DENIED",
                _QUOTA_PROJECT_HELP,
                details=[
                    error_info(
                        "SERVICE_DISABLED",
                        {
                            "service": "aiplatform.googleapis.com",
                            "consumer": f"projects/{GCLOUD_CLIENT_PROJECT}",
                        },
                    )
                ],
            )
        project = request.match_info["project"]
        permission = PERMISSIONS[op]
        if any(permission in self._denied.get(p, ()) for p in (project, self._number(project))):
            self.permission_denied += 1
            full = f"//aiplatform.googleapis.com/{resource}"
            return rpc_error(
                "PERMISSION_DENIED",
                f"Permission '{permission}' denied on resource '{full}' (or it may not exist).",
                details=[
                    error_info(
                        "IAM_PERMISSION_DENIED",
                        {"permission": permission, "resource": resource},
                        domain="aiplatform.googleapis.com",
                    )
                ],
            )
        if op != "create":
            wait = self._take_quota("crud", request, self.crud_quota_per_minute)
            if wait is not None:
                return self._quota_error(request, wait, "Resource management (CRUD) requests")
        return None

    def _take_quota(self, kind: str, request: web.Request, limit: int | None) -> float | None:
        """Count one request in its sliding window; the seconds to wait when over the limit."""
        if limit is None:
            return None
        key = (kind, self._number(request.match_info["project"]), request.match_info["location"])
        window = self._windows.setdefault(key, deque())
        now = self.clock()
        while window and window[0] <= now - self.quota_window:
            window.popleft()
        if len(window) >= limit:
            self.rejected_429 += 1
            return max(0.001, window[0] + self.quota_window - now)
        window.append(now)
        return None

    def _quota_error(self, request: web.Request, wait: float | None, metric: str) -> web.Response:
        number = self._number(request.match_info["project"])
        details: list[dict[str, Any]] = [
            error_info(
                "RATE_LIMIT_EXCEEDED",
                {
                    "service": "aiplatform.googleapis.com",
                    "consumer": f"projects/{number}",
                    "quota_metric": f"aiplatform.googleapis.com/{metric}",
                    "quota_location": request.match_info["location"],
                },
            )
        ]
        headers: dict[str, str] = {}
        if wait is not None and self.retry_info_detail:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format_duration(round(wait, 3)),
                }
            )
        if wait is not None and self.retry_after_header:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))  # HTTP wants whole seconds
        return rpc_error(
            "RESOURCE_EXHAUSTED",
            f"Quota exceeded for quota metric '{metric}' and limit '{metric} per minute per "
            f"region' of service 'aiplatform.googleapis.com' for consumer "
            f"'project_number:{number}'.",
            details=details,
            headers=headers,
        )

    def _scripted_error(self, request: web.Request, step: _Scripted) -> web.Response:
        if step.status == 429:
            self.rejected_429 += 1
            if step.retry_after is None:
                return rpc_error("RESOURCE_EXHAUSTED", "Resource has been exhausted.")
            return self._quota_error(request, step.retry_after, "Job or LRO submission requests")
        if step.status >= 500:
            self.rejected_5xx += 1
        else:
            self.rejected_other += 1
        return error_for_http(step.status, "Injected failure (FakeVertex.fail_next).")

    def _next_scripted(self, op: Op) -> _Scripted | None:
        queue = self._scripted.get(op)
        return queue.pop(0) if queue else None

    def _find(self, request: web.Request) -> FakeJob | None:
        project, location = request.match_info["project"], request.match_info["location"]
        job = self._by_id.get(request.match_info["job_id"])
        if job is None or job.deleted or job.location != location:
            return None
        if project not in (job.project, job.project_number):
            return None
        job.tick(self.clock(), self.lifecycle_of(job), self.cancel_delay, self.cancel_outcome)
        return job

    @staticmethod
    def _not_found(request: web.Request) -> web.Response:
        name = request.path.removeprefix("/v1/").removesuffix(":cancel")
        return rpc_error("NOT_FOUND", f'The CustomJob "{name}" does not exist.')

    # ------------------------------------------------------------------------ handlers
    async def _create(self, request: web.Request) -> web.Response:
        project, location = request.match_info["project"], request.match_info["location"]
        attempt = CreateAttempt(self.clock(), project, location)
        self.create_log.append(attempt)
        self.creates_received += 1
        parent = f"projects/{project}/locations/{location}"
        refused = self._gate(request, "create", parent)
        if refused is not None:
            attempt.outcome = "unauthenticated" if refused.status == 401 else "denied"
            return refused
        raw = await request.read()  # the whole body is on the wire before anything fails
        if self.create_latency > 0:
            await asyncio.sleep(self.create_latency)
        step = self._next_scripted("create")
        if (step is not None and step.kind == "drop") or (
            step is None and self._roll(self.drop_rate)
        ):
            self.dropped += 1
            attempt.outcome = "dropped"
            drop_connection(request, self.drop_style)
            return web.Response()  # discarded by aiohttp: the transport is gone
        if step is not None and step.kind == "error":
            attempt.outcome = (
                "429" if step.status == 429 else ("5xx" if step.status >= 500 else str(step.status))
            )
            return self._scripted_error(request, step)
        if step is None and self._roll(self.error_rate_5xx):
            self.rejected_5xx += 1
            attempt.outcome = "5xx"
            return rpc_error("UNAVAILABLE", "The service is currently unavailable.")
        try:
            body, spec = self._parse_body(raw)
        except _Invalid as exc:
            self.rejected_invalid += 1
            attempt.outcome = "invalid"
            return exc.response
        wait = self._take_quota("create", request, self.quota_per_minute)
        if wait is not None:
            attempt.outcome = "429"
            return self._quota_error(request, wait, "Job or LRO submission requests")
        job = self._store(project, location, body, spec)
        self.creates_accepted += 1
        attempt.name = job.name
        attempt.outcome = "accepted"
        if (step is not None and step.kind == "lost") or (
            step is None and self._roll(self.lost_response_rate)
        ):
            self.lost_responses += 1
            attempt.outcome = "lost"
            return await self._lose(request, job.to_json())
        return web.json_response(job.to_json())

    def _parse_body(self, raw: bytes) -> tuple[Any, dict[str, Any]]:
        """The request JSON and its canonical form, or raise _Invalid with the 400 to send."""
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise _Invalid(
                rpc_error("INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}.")
            ) from exc
        # Google's front end first: the request against aiplatform's discovery document.
        found = discovery.aiplatform().check(_CUSTOM_JOB_SCHEMA, body, "custom_job")
        if found:
            message, detail = discovery.bad_request(found)
            raise _Invalid(rpc_error("INVALID_ARGUMENT", message, details=[detail]))
        try:
            spec: dict[str, Any] = parse(CUSTOM_JOB, body, "custom_job") or {}
        except SchemaError as exc:
            detail = bad_request_detail([(exc.field, exc.message)])
            raise _Invalid(rpc_error("INVALID_ARGUMENT", exc.message, details=[detail])) from exc
        violations = validate(spec, check_machine_accelerator=self.check_machine_accelerator)
        if violations:
            raise _Invalid(
                rpc_error(
                    "INVALID_ARGUMENT",
                    violations_message(violations),
                    details=[bad_request_detail(violations)],
                )
            )
        # The service fills a default boot disk into each pool, as real responses show.
        for pool in spec["jobSpec"]["workerPoolSpecs"]:
            if pool:
                pool.setdefault("diskSpec", dict(_DISK_DEFAULT))
        return body, spec

    def _store(
        self, project: str, location: str, body: dict[str, Any], spec: dict[str, Any]
    ) -> FakeJob:
        job_id = str(self._id_rng.randrange(10**18, 9 * 10**18))
        while job_id in self._by_id:
            job_id = str(self._id_rng.randrange(10**18, 9 * 10**18))
        number = self._number(project)
        now = self.clock()
        job = FakeJob(
            name=f"projects/{number}/locations/{location}/customJobs/{job_id}",
            job_id=job_id,
            project=project,
            project_number=number,
            location=location,
            body=body,
            spec=spec,
            seq=len(self._jobs),
            created_at=now,
            create_time=datetime.now(timezone.utc),
        )
        job.set_state(self.initial_state, now)
        self._jobs.append(job)
        self._by_id[job_id] = job
        for hook in self.on_create:
            hook(job)
        return job

    async def _lose(self, request: web.Request, payload: dict[str, Any]) -> web.Response:
        """The job exists, but the client never gets a whole response."""
        if self.lost_style != "partial":
            drop_connection(request, self.lost_style)
            return web.Response()
        # Headers and half the body arrive, then the connection closes: the client's request
        # "succeeds" with 200 and reading the body raises ClientPayloadError.
        data = json.dumps(payload).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=UTF-8"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        drop_connection(request, "close")
        return web.Response()

    async def _held(self, kind: str, seconds: float) -> None:
        for key in (kind, "any"):
            self.inflight[key] = self.inflight.get(key, 0) + 1
            self.peak_inflight[key] = max(self.peak_inflight.get(key, 0), self.inflight[key])
        try:
            await asyncio.sleep(seconds)
        finally:
            for key in (kind, "any"):
                self.inflight[key] -= 1

    async def _get(self, request: web.Request) -> web.Response:
        self.get_calls += 1
        refused = self._gate(request, "get", request.path.removeprefix("/v1/"))
        if refused is not None:
            return refused
        if self.get_latency > 0:
            await self._held("get", self.get_latency)
        step = self._next_scripted("get")
        if step is not None:
            return self._scripted_error(request, step)
        job = self._find(request)
        if job is None:
            return self._not_found(request)
        return web.json_response(job.to_json())

    async def _list(self, request: web.Request) -> web.Response:
        self.list_calls += 1
        project, location = request.match_info["project"], request.match_info["location"]
        refused = self._gate(request, "list", f"projects/{project}/locations/{location}")
        if refused is not None:
            return refused
        if self.list_latency > 0:
            await self._held("list", self.list_latency)
        step = self._next_scripted("list")
        if step is not None:
            return self._scripted_error(request, step)
        query = request.query
        for key in query:
            if (
                key
                not in {
                    "filter",
                    "pageSize",
                    "page_size",
                    "pageToken",
                    "page_token",
                    "readMask",
                    "read_mask",
                }
                | _SYSTEM_PARAMS
            ):
                return rpc_error(
                    "INVALID_ARGUMENT",
                    f'Invalid JSON payload received. Unknown name "{key}": '
                    "Cannot bind query parameter. Field '" + key + "' could not be found in "
                    "request message.",
                )
        text = query.get("filter", "")
        raw_size = query.get("pageSize", query.get("page_size", "0"))
        try:
            size = int(raw_size)
            predicate = compile_filter(text)
        except ValueError as exc:
            message = (
                str(exc)
                if isinstance(exc, FilterError)
                else (f"Invalid value at 'page_size' (TYPE_INT32), \"{raw_size}\"")
            )
            return rpc_error("INVALID_ARGUMENT", message)
        if size < 0:
            return rpc_error("INVALID_ARGUMENT", "page_size must not be negative.")
        size = min(size or self.default_page_size, self.max_page_size)
        before = read_page_token(query.get("pageToken", query.get("page_token", "")), text)
        if before is False:
            return rpc_error("INVALID_ARGUMENT", "Invalid page token.")
        now = self.clock()
        matched: list[FakeJob] = []
        # Newest first, keyed by creation order: a job created while a caller pages through
        # cannot shift later pages (what an offset token would do).
        for job in reversed(self._jobs):
            if job.deleted or job.location != location:
                continue
            if project not in (job.project, job.project_number):
                continue
            if before is not None and job.seq >= before:
                continue
            job.tick(now, self.lifecycle_of(job), self.cancel_delay, self.cancel_outcome)
            if predicate(job.to_json()):
                matched.append(job)
                if len(matched) > size:
                    break
        body: dict[str, Any] = {}
        if matched[:size]:  # proto3 JSON leaves out an empty list: no jobs -> {}
            body["customJobs"] = [job.to_json() for job in matched[:size]]
        if len(matched) > size:
            body["nextPageToken"] = page_token(matched[size - 1].seq, text)
        return web.json_response(body)

    async def _cancel(self, request: web.Request) -> web.Response:
        self.cancel_calls += 1
        refused = self._gate(
            request, "cancel", request.path.removeprefix("/v1/").removesuffix(":cancel")
        )
        if refused is not None:
            return refused
        if self.cancel_latency > 0:
            await self._held("cancel", self.cancel_latency)
        step = self._next_scripted("cancel")
        if step is not None:
            return self._scripted_error(request, step)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return rpc_error("INVALID_ARGUMENT", "Invalid JSON payload received.")
        # The body is the CancelCustomJobRequest: only "name" is a known field.
        unknown = [k for k in (body if isinstance(body, dict) else {"": 0}) if k != "name"]
        if unknown:
            return rpc_error(
                "INVALID_ARGUMENT",
                f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.',
            )
        job = self._find(request)
        if job is None:
            return self._not_found(request)
        if job.terminal:
            return rpc_error(
                "FAILED_PRECONDITION",
                f'Cannot cancel CustomJob "{job.name}": it is already in state {job.state}.',
            )
        if job.state != CANCELLING:
            job.set_state(CANCELLING, self.clock())
        return web.json_response({})

    async def _delete(self, request: web.Request) -> web.Response:
        self.delete_calls += 1
        refused = self._gate(request, "delete", request.path.removeprefix("/v1/"))
        if refused is not None:
            return refused
        step = self._next_scripted("delete")
        if step is not None:
            return self._scripted_error(request, step)
        job = self._find(request)
        if job is None:
            return self._not_found(request)
        if not job.terminal:
            return rpc_error(
                "FAILED_PRECONDITION",
                f'CustomJob "{job.name}" is in state {job.state}; only finished jobs can be '
                "deleted. Cancel it first.",
            )
        job.deleted = True
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        op_id = str(self._id_rng.randrange(10**18, 9 * 10**18))
        return web.json_response(
            {
                "name": f"projects/{job.project_number}/locations/{job.location}"
                f"/operations/{op_id}",
                "metadata": {
                    "@type": _PKG + "DeleteOperationMetadata",
                    "genericMetadata": {"createTime": now, "updateTime": now},
                },
                "done": True,
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            }
        )


class _Invalid(Exception):
    """Carries the 400 response for a create body that does not parse or validate."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response
