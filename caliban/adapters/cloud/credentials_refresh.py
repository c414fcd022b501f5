"""Access tokens caliban fetches itself, for the credential types gcloud-aio-auth lacks.

A :class:`Refreshing` holds one token and fetches the next one shortly before it
expires, one fetch at a time however many requests wait for it. Fetch failures
are :class:`~caliban.errors.AuthError`: ``retryable`` when trying again can help
(no answer, 429, 5xx), so a refused credential fails at once and a flaky
network does not. Tokens never appear in an error message.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from caliban.errors import AuthError

TIMEOUT = 30.0
# Refresh this long before the expiry a server announced: a request signed with a
# token that expires in flight fails with 401 and nothing retries it.
EARLY = 240.0
DEFAULT_LIFETIME = 3600.0


@dataclass(frozen=True)
class Issued:
    token: str
    expires_at: float  # time.time() based

    def __repr__(self) -> str:
        return f"Issued(<token>, expires_at={self.expires_at})"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, AuthError) and exc.retryable


class Refreshing:
    """One cached token from ``fetch``, renewed before it expires."""

    def __init__(self, fetch: Callable[[], Awaitable[Issued]]) -> None:
        self._fetch = fetch
        self._issued: Issued | None = None
        self._lock = anyio.Lock()

    def _fresh(self) -> Issued | None:
        issued = self._issued
        return issued if issued is not None and issued.expires_at - EARLY > time.time() else None

    async def get(self) -> str:
        issued = self._fresh()
        if issued is not None:
            return issued.token
        async with self._lock:
            issued = self._fresh()
            if issued is None:
                retrying = AsyncRetrying(
                    retry=retry_if_exception(_retryable),
                    stop=stop_after_attempt(4),
                    wait=wait_random_exponential(multiplier=0.5, max=8),
                    reraise=True,
                )
                fetched: Issued = await retrying(self._fetch)
                self._issued = issued = fetched
            return issued.token


def _refusal(status: int, text: str) -> str:
    """What a token endpoint said, from an OAuth error or a google.rpc.Status body."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text.strip()[:200] or f"HTTP {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("status") or status)[:200]
        if err:
            description = data.get("error_description")
            return f"{err}: {description}"[:200] if description else str(err)[:200]
    return f"HTTP {status}"


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    form: Mapping[str, str] | None = None,
    body: object | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A JSON answer from a token endpoint, or an AuthError saying who refused what."""
    try:
        with anyio.fail_after(TIMEOUT):
            async with session.request(
                method,
                url,
                data=dict(form) if form is not None else None,
                json=body,
                headers={"Accept": "application/json", **(headers or {})},
            ) as response:
                text = await response.text()
                status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise AuthError(
            f"cannot reach {what} ({url}): {exc or type(exc).__name__}", retryable=True
        ) from exc
    if status >= 400:
        raise AuthError(
            f"{what} refused the credentials (HTTP {status}: {_refusal(status, text)})",
            status=status,
            retryable=status == 429 or status >= 500,
            hint="check the credentials file, or log in again",
        )
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise AuthError(f"{what} answered something that is not a JSON object", retryable=True)
    return data


def oauth_token(answer: Mapping[str, Any], *, what: str) -> Issued:
    """An OAuth2 / STS token response (``access_token``, ``expires_in``)."""
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise AuthError(f"{what} answered without an access token")
    try:
        lifetime = float(answer.get("expires_in") or DEFAULT_LIFETIME)
    except (TypeError, ValueError):
        lifetime = DEFAULT_LIFETIME
    return Issued(token, time.time() + lifetime)


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)")


def parse_rfc3339(text: str) -> float | None:
    """A timestamp like Google's ``expireTime``; None when it is not one."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        return None
    zone = "+00:00" if m[2] == "Z" else m[2]
    return dt.datetime.fromisoformat(m[1] + zone).timestamp()


async def impersonate(
    session: aiohttp.ClientSession,
    url: str,
    source_token: str,
    *,
    scopes: Sequence[str],
    lifetime: float = DEFAULT_LIFETIME,
    delegates: Sequence[str] = (),
) -> Issued:
    """A service account's token from IAM Credentials ``generateAccessToken``."""
    body: dict[str, Any] = {"scope": list(scopes), "lifetime": f"{int(lifetime)}s"}
    if delegates:
        body["delegates"] = list(delegates)
    answer = await request_json(
        session,
        "POST",
        url,
        what="IAM Credentials (service account impersonation)",
        body=body,
        headers={"Authorization": f"Bearer {source_token}"},
    )
    token = answer.get("accessToken")
    expires = parse_rfc3339(str(answer.get("expireTime") or ""))
    if not isinstance(token, str) or not token:
        raise AuthError("IAM Credentials answered without an access token")
    return Issued(token, expires if expires is not None else time.time() + lifetime)
