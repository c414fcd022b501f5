"""Authenticated JSON calls to Google APIs, with Google's errors translated.

Google APIs answer errors with a google.rpc.Status body::

    {"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED",
               "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": "30s"}]}}

:func:`status_error` turns that (or any HTTP error) into the matching
:class:`~caliban.errors.BackendError` with ``retryable`` and ``retry_after``.
Connection failures are split by whether the request may have reached the
server: a refused connection is safe to retry; a reset or timeout after a
create was sent becomes :class:`~caliban.errors.OutcomeUnknown`, so the caller
looks for the object before sending it again.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from caliban.adapters.cloud.auth import Credentials
from caliban.errors import AuthError, BackendError, NotFound, OutcomeUnknown, QuotaError

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def parse_retry_after(header: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _duration(text: object) -> float | None:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)s\s*", str(text))
    return float(m[1]) if m else None


def status_error(status: int, body: str, headers: Mapping[str, str], *, what: str) -> BackendError:
    message, reason, retry_delay = body.strip()[:300] or f"HTTP {status}", "", None
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        message = str(err.get("message") or message)
        reason = str(err.get("status") or "")
        for detail in err.get("details") or []:
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
                retry_delay = _duration(detail.get("retryDelay"))
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if retry_after is None:
        retry_after = retry_delay
    text = f"{what}: {message}" + (f" ({reason})" if reason else "")
    if status == 401:
        return AuthError(text, status=status, hint="the credentials were not accepted")
    if status == 403 and "requires a quota project" in message:
        return AuthError(
            text,
            status=status,
            hint="user credentials need a quota project: pass --quota_project PROJECT, set "
            "GOOGLE_CLOUD_QUOTA_PROJECT, or run "
            "`gcloud auth application-default set-quota-project PROJECT`",
        )
    if status == 403:
        return AuthError(
            text, status=status, hint="the account lacks a permission or the API is not enabled"
        )
    if status == 404:
        return NotFound(text, status=status)
    if status == 429:
        # Concurrency quotas (GPUs in use) do not free up by retrying in seconds.
        concurrency = "custom_model_training" in message or "_gpus" in message.lower()
        return QuotaError(
            text,
            status=status,
            retryable=not concurrency,
            retry_after=retry_after,
            hint="the accelerator quota of this region is used up: wait for jobs to finish, "
            "ask for more quota, or use another region"
            if concurrency
            else None,
        )
    return BackendError(
        text, status=status, retryable=status in RETRYABLE_STATUS, retry_after=retry_after
    )


class GoogleApi:
    """JSON over one shared aiohttp session, with a bearer token per request."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials | None,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.session = session
        self.credentials = credentials
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: object | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
        what: str = "request",
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = f"Bearer {await self.credentials.token()}"
            if self.credentials.quota_project:
                headers["x-goog-user-project"] = self.credentials.quota_project
        try:
            async with self.session.request(
                method, url, json=body, params=params, headers=headers, timeout=self.timeout
            ) as response:
                text = await response.text()
                if response.status >= 400:
                    raise status_error(response.status, text, response.headers, what=what)
        except aiohttp.ClientConnectorError as exc:
            # Never reached the server: safe to send again.
            raise BackendError(
                f"{what}: cannot connect to {url}: {exc.os_error or exc}", retryable=True
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = f"{what}: connection lost ({type(exc).__name__}: {exc or 'no response'})"
            if idempotent:
                raise BackendError(detail, retryable=True) from exc
            # A request that timed out may still be running on the server: give it
            # as long again before looking for what it created.
            settle = self.timeout.total if isinstance(exc, TimeoutError) else None
            raise OutcomeUnknown(detail, settle=settle) from exc
        if not text.strip():
            return {}
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BackendError(
                f"{what}: the server answered with something that is not JSON", retryable=True
            ) from exc
