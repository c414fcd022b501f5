"""The output of Vertex jobs, read from Cloud Logging (``entries.list``, API v2).

Vertex AI writes what a custom job prints to Cloud Logging under the monitored
resource ``ml_job``, labelled with the job's numeric id (the last part of
``projects/P/locations/R/customJobs/ID``)::

    resource.type="ml_job" AND resource.labels.job_id=("1" OR "2")

One query answers for many jobs, so ``caliban logs --xgroup X --failed`` costs
one call per project and page, not one per job. ``entries.list`` has a small
per-project read quota, so every call goes through one :class:`TokenBucket`
per project, a 429 holds back every caller of that project for its
Retry-After, and page tokens are followed to the end. The endpoint is
``https://logging.googleapis.com`` unless ``CALIBAN_LOGGING_ENDPOINT`` says
otherwise (private endpoints; the local stand-in the tests run).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from caliban.adapters.cloud.http import GoogleApi
from caliban.errors import AuthError, QuotaError
from caliban.limits import RetryPolicy, TokenBucket, with_retries
from caliban.platforms.vertex.spec import quote_filter_value

ENDPOINT_ENV = "CALIBAN_LOGGING_ENDPOINT"
DEFAULT_ENDPOINT = "https://logging.googleapis.com"
ROLE = "roles/logging.viewer"
# Cloud Logging's read quota is counted per project per minute (60 by default);
# a burst of a few pages is fine, a sustained loop is paced under it.
READS_PER_MINUTE = 60.0
BURST = 5.0
PAGE_SIZE = 1000
# Ids per query: a filter may hold 20,000 characters and a job id takes ~25.
IDS_PER_QUERY = 200
POLICY = RetryPolicy(attempts=5, initial=1.0, max_delay=30, deadline=300)
# How often `caliban logs -f` asks for new entries (read late: tests shorten it).
FOLLOW_POLL = 5.0


@dataclass(frozen=True)
class Entry:
    """One log line (or block) a job printed."""

    job_id: str  # the numeric Vertex job id
    timestamp: str
    insert_id: str
    text: str


def job_filter(job_ids: Iterable[str], *, since: str | None = None) -> str:
    """The Logging query for the output of ``job_ids`` (numeric ids), at or after ``since``."""
    ids = sorted(set(job_ids))
    if not ids:
        raise ValueError("no job ids")
    if len(ids) == 1:
        which = f"resource.labels.job_id={quote_filter_value(ids[0])}"
    else:
        which = "resource.labels.job_id=(" + " OR ".join(quote_filter_value(i) for i in ids) + ")"
    parts = ['resource.type="ml_job"', which]
    if since:
        parts.append(f"timestamp>={quote_filter_value(since)}")
    return " AND ".join(parts)


def entry_text(entry: dict[str, Any]) -> str:
    """What the job printed: ``textPayload``, else a structured entry's message."""
    text = entry.get("textPayload")
    if text is None:
        payload = entry.get("jsonPayload")
        if isinstance(payload, dict):
            message = payload.get("message")
            text = message if isinstance(message, str) else json.dumps(payload, sort_keys=True)
        else:
            text = ""
    return str(text)


class LogReader:
    """``entries.list`` for Vertex jobs, paced per project, retried on 429/5xx."""

    def __init__(
        self,
        api: GoogleApi,
        endpoint: str | None = None,
        *,
        reads_per_minute: float = READS_PER_MINUTE,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.api = api
        self.url = (endpoint or DEFAULT_ENDPOINT).rstrip("/") + "/v2/entries:list"
        self.reads_per_minute = reads_per_minute
        self.policy = policy or POLICY
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, project: str) -> TokenBucket:
        if project not in self._buckets:
            self._buckets[project] = TokenBucket(self.reads_per_minute / 60.0, BURST)
        return self._buckets[project]

    async def _page(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        bucket = self._bucket(project)

        async def once() -> dict[str, Any]:
            await bucket.acquire()
            page: dict[str, Any] = await self.api.call(
                "POST", self.url, body=body, what=f"reading Cloud Logging of project {project}"
            )
            return page

        def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
            if isinstance(exc, QuotaError):
                bucket.pause(delay)

        try:
            return await with_retries(once, self.policy, on_retry=on_retry)
        except AuthError as exc:
            # A user token without a quota project is a 403 too, with its own advice.
            if exc.status != 403 or "quota project" in exc.message:
                raise
            raise AuthError(
                f"reading the logs of Vertex jobs in project {project} needs the role {ROLE} "
                "(Logs Viewer) for the account caliban uses",
                status=403,
            ) from exc

    async def entries(
        self,
        project: str,
        job_ids: Sequence[str],
        *,
        since: str | None = None,
        newest_first: bool = False,
    ) -> AsyncGenerator[Entry, None]:
        """Every entry of ``job_ids`` in ``project``, oldest first (or newest first)."""
        ids = sorted(set(job_ids))
        for start in range(0, len(ids), IDS_PER_QUERY):
            body: dict[str, Any] = {
                "resourceNames": [f"projects/{project}"],
                "filter": job_filter(ids[start : start + IDS_PER_QUERY], since=since),
                "orderBy": "timestamp desc" if newest_first else "timestamp asc",
                "pageSize": PAGE_SIZE,
            }
            while True:
                page = await self._page(project, body)
                for raw in page.get("entries") or []:
                    labels = (raw.get("resource") or {}).get("labels") or {}
                    yield Entry(
                        job_id=str(labels.get("job_id") or ""),
                        timestamp=str(raw.get("timestamp") or ""),
                        insert_id=str(raw.get("insertId") or ""),
                        text=entry_text(raw),
                    )
                token = page.get("nextPageToken")
                if not token:
                    break
                body = {**body, "pageToken": str(token)}


def lines_of(text: str) -> list[str]:
    """An entry's text as lines (Vertex puts one printed line in most entries)."""
    return text.splitlines() or [""]


__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "ROLE",
    "Entry",
    "LogReader",
    "entry_text",
    "job_filter",
    "lines_of",
]
