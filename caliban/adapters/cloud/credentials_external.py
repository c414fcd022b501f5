"""Workload and workforce identity federation: ``external_account`` and
``external_account_authorized_user`` credentials files.

An ``external_account`` file says where to find a token from another identity
provider (``credential_source``: a file, a URL, a command, or AWS) and trades
it at Google's STS (``token_url``, RFC 8693 token exchange) for a Google access
token, which IAM Credentials may then swap for a service account's
(``service_account_impersonation_url``). An ``external_account_authorized_user``
file (``gcloud auth application-default login`` with a workforce pool) holds a
refresh token redeemed at ``token_url`` with the OAuth client's basic auth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import anyio

from caliban.adapters.cloud import credentials_aws, credentials_executable
from caliban.adapters.cloud.credentials_refresh import (
    DEFAULT_LIFETIME,
    Issued,
    impersonate,
    oauth_token,
    request_json,
)
from caliban.errors import AuthError, ConfigError

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
_WORKFORCE_AUDIENCE = re.compile(r"//iam\.[^/]+/locations/[^/]+/workforcePools/[^/]+/providers/.+")
_IMPERSONATED_EMAIL = re.compile(r"/serviceAccounts/([^/:]+):generateAccessToken$")


def source_kind(source: Mapping[str, Any]) -> str:
    if str(source.get("environment_id", "")).startswith("aws"):
        return "aws"
    for kind in ("executable", "file", "url"):
        if kind in source:
            return kind
    return "unknown"


def _require(data: Mapping[str, Any], where: str, *names: str) -> None:
    missing = [n for n in names if not data.get(n)]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}")


def check_external_account(data: Mapping[str, Any], where: str) -> None:
    """ConfigError for an ``external_account`` file Google's libraries would refuse."""
    _require(data, where, "audience", "subject_token_type", "token_url", "credential_source")
    source = data["credential_source"]
    if not isinstance(source, dict):
        raise ConfigError(f"{where}: credential_source is not an object")
    kind = source_kind(source)
    if kind == "unknown":
        raise ConfigError(
            f"{where}: credential_source names none of file, url, executable, environment_id"
        )
    if kind == "aws":
        if source["environment_id"] != "aws1":
            raise ConfigError(
                f"{where}: AWS environment_id {source['environment_id']!r} is not supported "
                "(only aws1)"
            )
        _require(source, f"{where}: credential_source", "regional_cred_verification_url")
    elif kind == "executable":
        credentials_executable.check_shape(source["executable"], where)
    elif not source[kind]:
        raise ConfigError(f"{where}: credential_source.{kind} is empty")
    if kind == "url" and not isinstance(source.get("headers") or {}, dict):
        raise ConfigError(f"{where}: credential_source.headers is not an object")
    options = data.get("service_account_impersonation") or {}
    lifetime = options.get("token_lifetime_seconds", 3600) if isinstance(options, dict) else None
    if not isinstance(lifetime, int) or not 600 <= lifetime <= 43200:
        raise ConfigError(
            f"{where}: service_account_impersonation.token_lifetime_seconds must be 600 to 43200"
        )
    fmt = source.get("format") or {}
    if not isinstance(fmt, dict) or fmt.get("type", "text") not in ("text", "json"):
        raise ConfigError(f'{where}: credential_source.format.type must be "text" or "json"')
    if fmt.get("type") == "json" and not fmt.get("subject_token_field_name"):
        raise ConfigError(
            f"{where}: a json credential_source.format needs subject_token_field_name"
        )
    if data.get("workforce_pool_user_project") and not _WORKFORCE_AUDIENCE.fullmatch(
        str(data["audience"])
    ):
        raise ConfigError(
            f"{where}: workforce_pool_user_project is only for workforce pool audiences"
        )


def check_external_authorized_user(data: Mapping[str, Any], where: str) -> None:
    _require(data, where, "refresh_token", "token_url", "client_id", "client_secret")


def _from_format(content: str, fmt: Mapping[str, Any], what: str) -> str:
    if fmt.get("type", "text") == "text":
        token = content.strip()
    else:
        field = str(fmt["subject_token_field_name"])
        try:
            value = json.loads(content).get(field)
        except (json.JSONDecodeError, AttributeError):
            raise AuthError(f"{what} is not a JSON object") from None
        if not isinstance(value, str):
            raise AuthError(f"{what} has no {field} field")
        token = value.strip()
    if not token:
        raise AuthError(f"{what} is empty")
    return token


class ExternalAccount:
    """Google tokens for a workload identity federation ``external_account`` file."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        data: Mapping[str, Any],
        *,
        scopes: list[str],
        environ: Mapping[str, str],
    ) -> None:
        self._session = session
        self._data = data
        self._scopes = scopes
        self._environ = environ

    async def _subject_token(self) -> str:
        source: Mapping[str, Any] = self._data["credential_source"]
        fmt: Mapping[str, Any] = source.get("format") or {}
        kind = source_kind(source)
        if kind == "file":
            path = str(source["file"])
            try:
                content = await (await anyio.Path(path).expanduser()).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise AuthError(f"cannot read the subject token file {path}: {exc}") from exc
            return _from_format(content, fmt, f"the subject token file {path}")
        if kind == "url":
            return await self._from_url(str(source["url"]), source.get("headers") or {}, fmt)
        if kind == "executable":
            url = str(self._data.get("service_account_impersonation_url") or "")
            email = _IMPERSONATED_EMAIL.search(url)
            return await credentials_executable.subject_token(
                source["executable"],
                audience=str(self._data["audience"]),
                token_type=str(self._data["subject_token_type"]),
                impersonated_email=email[1] if email else None,
                environ=self._environ,
            )
        return await credentials_aws.subject_token(
            self._session, source, audience=str(self._data["audience"]), environ=self._environ
        )

    async def _from_url(self, url: str, headers: Mapping[str, str], fmt: Mapping[str, Any]) -> str:
        try:
            with anyio.fail_after(30):
                async with self._session.get(url, headers=dict(headers)) as response:
                    content, status = await response.text(), response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AuthError(
                f"cannot reach the subject token URL {url}: {exc or type(exc).__name__}",
                retryable=True,
            ) from exc
        if status != 200:
            raise AuthError(
                f"the subject token URL {url} answered HTTP {status}",
                status=status,
                retryable=status == 429 or status >= 500,
            )
        return _from_format(content, fmt, f"the answer of {url}")

    async def fetch(self) -> Issued:
        data = self._data
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "audience": str(data["audience"]),
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token_type": str(data["subject_token_type"]),
            "subject_token": await self._subject_token(),
            "scope": " ".join(self._scopes),
        }
        headers = {}
        if data.get("client_id"):
            headers["Authorization"] = aiohttp.encode_basic_auth(
                str(data["client_id"]), str(data.get("client_secret") or "")
            )
        elif data.get("workforce_pool_user_project"):
            # With a client id, STS knows the project from the client instead.
            form["options"] = json.dumps({"userProject": data["workforce_pool_user_project"]})
        what = "the security token service"
        federated = oauth_token(
            await request_json(
                self._session, "POST", str(data["token_url"]), what=what, form=form, headers=headers
            ),
            what=what,
        )
        url = data.get("service_account_impersonation_url")
        if not url:
            return federated
        options = data.get("service_account_impersonation") or {}
        lifetime = options.get("token_lifetime_seconds") if isinstance(options, dict) else None
        return await impersonate(
            self._session,
            str(url),
            federated.token,
            scopes=self._scopes,
            lifetime=float(lifetime or DEFAULT_LIFETIME),
        )


class ExternalAuthorizedUser:
    """Google tokens for a workforce identity ``external_account_authorized_user`` file."""

    def __init__(self, session: aiohttp.ClientSession, data: Mapping[str, Any]) -> None:
        self._session = session
        self._data = data
        self._refresh_token = str(data["refresh_token"])

    async def fetch(self) -> Issued:
        data = self._data
        auth = aiohttp.encode_basic_auth(str(data["client_id"]), str(data["client_secret"]))
        what = "the workforce identity token service"
        answer = await request_json(
            self._session,
            "POST",
            str(data["token_url"]),
            what=what,
            form={"grant_type": "refresh_token", "refresh_token": self._refresh_token},
            headers={"Authorization": auth},
        )
        # STS may rotate the refresh token; the new one is kept in memory only.
        if isinstance(answer.get("refresh_token"), str) and answer["refresh_token"]:
            self._refresh_token = answer["refresh_token"]
        return oauth_token(answer, what=what)
