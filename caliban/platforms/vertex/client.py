"""Jobs as Vertex AI custom jobs (REST v1).

The endpoint is regional (``https://REGION-aiplatform.googleapis.com``) unless
overridden with ``--api_endpoint`` / ``CALIBAN_VERTEX_ENDPOINT`` (private
endpoints, and the local server the tests run). Vertex names jobs itself and
takes no request id, so a job is found again by its ``caliban_job`` label.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import anyio

from caliban.adapters.cloud.http import GoogleApi
from caliban.errors import AuthError, BackendError, NotFound
from caliban.limits import RetryPolicy, with_retries
from caliban.platforms.base import Update
from caliban.platforms.vertex import cloudlog
from caliban.platforms.vertex import spec as vertexspec
from caliban.spec import JobRecord, JobState

ENDPOINT_ENV = "CALIBAN_VERTEX_ENDPOINT"
_PAGE = 500
# status / stop calls: a few quick retries of 429, 5xx and connection errors.
_CALL_POLICY = RetryPolicy(attempts=4, initial=0.5, max_delay=8, deadline=60)


class VertexClient:
    def __init__(self, api: GoogleApi, endpoint: str | None = None) -> None:
        self.api = api
        self.endpoint = endpoint.rstrip("/") if endpoint else None

    def base(self, region: str) -> str:
        return self.endpoint or f"https://{region}-aiplatform.googleapis.com"

    def _parent(self, project: str, region: str) -> str:
        return f"{self.base(region)}/v1/projects/{project}/locations/{region}/customJobs"

    async def create(self, project: str, region: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.api.call(
            "POST",
            self._parent(project, region),
            body=body,
            idempotent=False,
            what=f"creating a Vertex custom job in {region}",
        )
        return result

    async def list(self, project: str, region: str, filter_: str) -> AsyncIterator[dict[str, Any]]:
        token = ""
        while True:
            params = {"filter": filter_, "pageSize": str(_PAGE)}
            if token:
                params["pageToken"] = token
            page = await self.api.call(
                "GET",
                self._parent(project, region),
                params=params,
                what=f"listing Vertex custom jobs in {region}",
            )
            for job in page.get("customJobs") or []:
                yield job
            token = page.get("nextPageToken") or ""
            if not token:
                return

    async def cancel(self, region: str, name: str) -> None:
        await self.api.call(
            "POST", f"{self.base(region)}/v1/{name}:cancel", body={}, what=f"cancelling {name}"
        )

    async def get(self, region: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.api.call(
            "GET", f"{self.base(region)}/v1/{name}", what=f"reading {name}"
        )
        return result


def _where(job: JobRecord) -> tuple[str, str]:
    return str(job.details["project"]), str(job.details["region"])


# Jobs are listed from a little before the oldest one was recorded: the local
# clock and Google's need not agree to the second.
CLOCK_SKEW = timedelta(hours=1)


def list_filter(jobs: Sequence[JobRecord], store_id: str) -> str:
    """One filter matching every job of ``jobs`` (and few others): this store's
    label, the experiment group's when they share one, and a creation time."""
    parts = [label_filter(vertexspec.STORE_LABEL, store_id)]
    xgroups = {_spec_label(j, vertexspec.XGROUP_LABEL) for j in jobs}
    if len(xgroups) == 1 and "" not in xgroups:
        parts.append(label_filter(vertexspec.XGROUP_LABEL, xgroups.pop()))
    oldest = min(datetime.fromisoformat(j.created) for j in jobs) - CLOCK_SKEW
    stamp = f"{oldest.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
    parts.append(f"create_time>={vertexspec.quote_filter_value(stamp)}")
    return " AND ".join(parts)


def label_filter(key: str, value: str) -> str:
    """``labels.KEY="VALUE"``, the value quoted whatever it holds."""
    return f"labels.{key}={vertexspec.quote_filter_value(value)}"


def _spec_label(job: JobRecord, key: str) -> str:
    found = job.spec.get("labels")
    return str(found.get(key) or "") if isinstance(found, dict) else ""


def _groups(jobs: Sequence[JobRecord]) -> dict[tuple[str, str, str], list[JobRecord]]:
    """Jobs by (project, region, endpoint): one list call answers for each group."""
    groups: dict[tuple[str, str, str], list[JobRecord]] = {}
    for job in jobs:
        key = (*_where(job), str(job.details.get("endpoint") or ""))
        groups.setdefault(key, []).append(job)
    return groups


async def _remote(
    client: VertexClient, project: str, region: str, jobs: Sequence[JobRecord], store_id: str
) -> dict[str, dict[str, Any]]:
    """The remote CustomJob of each of ``jobs`` that exists, by caliban job id."""
    wanted = {j.job_id for j in jobs}
    seen: dict[str, dict[str, Any]] = {}
    async for found in client.list(project, region, list_filter(jobs, store_id)):
        job_id = (found.get("labels") or {}).get(vertexspec.JOB_ID_LABEL)
        if job_id in wanted and job_id not in seen:
            seen[job_id] = found
    return seen


def _accepted(job_id: str, job: dict[str, Any], project: str, region: str) -> Update:
    name = str(job["name"])
    state = vertexspec.job_state(job.get("state"))
    url = vertexspec.console_url(project, region, name)
    return Update(
        job_id,
        platform_id=name,
        details={"console_url": url},
        state=state if state is not JobState.UNKNOWN else JobState.SUBMITTED,
        url=url,
    )


class VertexSubmitter:
    """Creates one CustomJob per caliban job; finds it again by its job-id label."""

    def __init__(self, client: VertexClient) -> None:
        self.client = client

    def quota_key(self, job: JobRecord) -> str:
        project, region = _where(job)
        return f"{project}/{region}"

    async def create(self, job: JobRecord) -> Update:
        project, region = _where(job)
        created = await self.client.create(project, region, dict(job.spec))
        return _accepted(job.job_id, created, project, region)

    async def find(self, job: JobRecord) -> Update | None:
        project, region = _where(job)
        async for found in self.client.list(
            project, region, label_filter(vertexspec.JOB_ID_LABEL, job.job_id)
        ):
            return _accepted(job.job_id, found, project, region)
        return None

    async def find_many(self, jobs: Sequence[JobRecord]) -> dict[str, Update]:
        """Which of ``jobs`` exist, with one list call per (project, region)
        instead of one per job (a resumed 500-job sweep)."""
        out: dict[str, Update] = {}
        for (project, region, _), group in _groups(jobs).items():
            store_id = _spec_label(group[0], vertexspec.STORE_LABEL)
            if not store_id:
                continue
            for job_id, found in (
                await _remote(self.client, project, region, group, store_id)
            ).items():
                out[job_id] = _accepted(job_id, found, project, region)
        return out


class VertexBackend:
    """status / stop / logs for Vertex jobs, each at the endpoint it was submitted to."""

    def __init__(
        self,
        api: GoogleApi,
        *,
        store_id: str,
        max_inflight: int = 16,
        reader: cloudlog.LogReader | None = None,
    ) -> None:
        self.api = api
        self.reader = reader
        self.store_id = store_id
        self.max_inflight = max_inflight

    def client(self, job: JobRecord) -> VertexClient:
        endpoint = job.details.get("endpoint")
        return VertexClient(self.api, str(endpoint) if endpoint else None)

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        """One filtered list per (project, region), however many jobs there are."""
        updates: list[Update] = []
        for (project, region, _), group in _groups(jobs).items():
            client = self.client(group[0])
            seen = await with_retries(
                partial(_remote, client, project, region, group, self.store_id), _CALL_POLICY
            )
            for job in group:
                remote = seen.get(job.job_id)
                if remote is None:
                    if job.state is not JobState.PLANNED:
                        updates.append(
                            Update(job.job_id, JobState.UNKNOWN, message=f"not found in {region}")
                        )
                    continue
                updates.append(
                    Update(
                        job.job_id,
                        vertexspec.job_state(remote.get("state")),
                        message=vertexspec.error_message(remote),
                        platform_id=str(remote["name"]),
                        # What a capacity ladder decides on (caliban.platforms.vertex.ladder).
                        details=vertexspec.remote_facts(remote),
                    )
                )
        return updates

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        """Cancel concurrently (at most ``max_inflight`` at once). A job that had
        already finished is recorded as it ended; one whose create was cut short
        (PLANNED, no name yet) is looked up first, as it may exist all the same."""
        limiter = anyio.CapacityLimiter(self.max_inflight)
        updates: list[Update] = []
        names = {j.job_id: j.platform_id for j in jobs if j.platform_id}
        unnamed = [j for j in jobs if not j.platform_id]
        if unnamed:
            for (project, region, _), group in _groups(unnamed).items():
                client = self.client(group[0])
                seen = await with_retries(
                    partial(_remote, client, project, region, group, self.store_id),
                    _CALL_POLICY,
                )
                names.update({job_id: str(found["name"]) for job_id, found in seen.items()})

        async def cancel_one(job: JobRecord) -> None:
            name = names.get(job.job_id)
            if not name:
                updates.append(Update(job.job_id, JobState.STOPPED, message="never submitted"))
                return
            _, region = _where(job)
            client = self.client(job)
            async with limiter:
                try:
                    await with_retries(partial(client.cancel, region, name), _CALL_POLICY)
                except AuthError:
                    raise
                except BackendError as exc:
                    updates.append(await self._not_cancelled(client, job, region, name, exc))
                    return
            # Accepted is not done: Vertex cancels asynchronously and the job can
            # still finish. `status` refreshes it until Vertex says how it ended.
            updates.append(
                Update(
                    job.job_id,
                    JobState.CANCELLING,
                    message="cancel requested",
                    platform_id=name,
                )
            )

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(cancel_one, job)
        return updates

    @staticmethod
    async def _not_cancelled(
        client: VertexClient, job: JobRecord, region: str, name: str, exc: BackendError
    ) -> Update:
        if isinstance(exc, NotFound):
            return Update(
                job.job_id,
                JobState.STOPPED,
                platform_id=name,
                message="no longer exists on Vertex AI",
            )
        if exc.status == 400:
            # Already finished (FAILED_PRECONDITION): record how it ended instead.
            try:
                remote = await with_retries(partial(client.get, region, name), _CALL_POLICY)
            except BackendError:
                pass
            else:
                return Update(
                    job.job_id,
                    vertexspec.job_state(remote.get("state")),
                    message=vertexspec.error_message(remote),
                    platform_id=name,
                )
        # Not terminal: `caliban stop` picks it up again next time.
        return Update(job.job_id, JobState.UNKNOWN, message=f"cancel failed: {exc.message}")

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        """The job's output from Cloud Logging; with ``follow``, new entries as they
        arrive until the job has ended and a last read finds nothing new."""
        if self.reader is None or not job.platform_id:
            raise BackendError(f"job {job.short_id} was never submitted to Vertex AI: no logs")
        project, _ = _where(job)
        numeric = vertexspec.numeric_id(job.platform_id)
        # Polls ask for timestamp >= the last one seen and skip the entries already
        # printed at that instant: two lines logged in the same microsecond, the
        # second ingested late, are both printed once.
        since: str | None = None
        at_since: set[str] = set()
        ended = job.state.terminal
        while True:
            fresh = False
            async for entry in self.reader.entries(project, [numeric], since=since):
                if entry.timestamp == since and entry.insert_id in at_since:
                    continue
                if entry.timestamp != since:
                    since, at_since = entry.timestamp, set()
                at_since.add(entry.insert_id)
                fresh = True
                yield entry.text if entry.text.endswith("\n") else entry.text + "\n"
            if not follow or (ended and not fresh):
                return
            if not fresh and not ended:
                now = await self.refresh([job])
                if any(u.state.terminal for u in now):
                    ended = True
                    continue  # one more read for what it printed last
            await anyio.sleep(cloudlog.FOLLOW_POLL)

    async def tails(self, jobs: Sequence[JobRecord], lines: int) -> dict[str, list[str]]:
        """The last ``lines`` lines of each job's output, with one query (newest
        first, stopped once every job has enough) per project for all of them."""
        if self.reader is None:
            return {}
        out: dict[str, list[str]] = {}
        by_project: dict[str, dict[str, str]] = {}
        for job in jobs:
            if job.platform_id:
                project, _ = _where(job)
                by_project.setdefault(project, {})[vertexspec.numeric_id(job.platform_id)] = (
                    job.job_id
                )
        for project, ids in by_project.items():
            newest: dict[str, list[str]] = {job_id: [] for job_id in ids.values()}
            short = set(ids)
            read = self.reader.entries(project, list(ids), newest_first=True)
            async with aclosing(read):
                async for entry in read:
                    if entry.job_id not in short:
                        continue
                    kept = newest[ids[entry.job_id]]
                    kept.extend(reversed(cloudlog.lines_of(entry.text)))
                    if len(kept) >= lines:
                        short.discard(entry.job_id)
                        if not short:
                            break  # every job has its lines: no more pages
            for job_id, kept in newest.items():
                out[job_id] = list(reversed(kept[:lines]))
        return out
