"""Google credentials of every kind application-default credentials can be,
with errors a user can act on.

Service account keys, ``authorized_user`` files and the GCE metadata server go
through gcloud-aio-auth; service account impersonation, workload identity
federation (``external_account``) and workforce identity
(``external_account_authorized_user``) are fetched here (see the
``credentials_*`` modules), because gcloud-aio-auth lacks or mishandles them.
A file that cannot work is a ConfigError before anything is sent.

Where the credentials come from, first found wins: ``--cloud_key``, then
``$GOOGLE_APPLICATION_CREDENTIALS``, then ``gcloud.cloud_key`` in
.calibanconfig.json, then the application-default credentials file
(``gcloud auth application-default login``), then the GCE metadata server,
which is only used when it answers (on Google Cloud machines). The key file's
``token_uri`` is honoured, which is also how tests point it at a local server.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import anyio
from tenacity import retry_if_exception, stop_after_attempt, wait_random_exponential

from caliban.errors import AuthError, ConfigError, MissingExtra

try:  # optional: the [cloud] and [cluster] extras bring it
    from gcloud.aio.auth import Token
except ModuleNotFoundError:
    raise MissingExtra("cloud", feature="Google Cloud access", package="gcloud-aio-auth") from None

from caliban.adapters.cloud import credentials_executable, credentials_external
from caliban.adapters.cloud.credentials_refresh import Issued, Refreshing, impersonate

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
QUOTA_PROJECT_ENV = "GOOGLE_CLOUD_QUOTA_PROJECT"
_KEY_TYPES = (
    "service_account",
    "authorized_user",
    "impersonated_service_account",
    "external_account",
    "external_account_authorized_user",
)
_REQUIRED = {
    "service_account": ("private_key", "client_email"),
    "authorized_user": ("client_id", "client_secret", "refresh_token"),
    "impersonated_service_account": ("service_account_impersonation_url", "source_credentials"),
}
_KIND = {
    "service_account": "service account key",
    "authorized_user": "user credentials file",
    "impersonated_service_account": "impersonated service account file",
    "external_account": "workload identity federation file",
    "external_account_authorized_user": "workforce identity file",
}


def adc_path(environ: Mapping[str, str]) -> Path:
    config = environ.get("CLOUDSDK_CONFIG")
    base = (
        Path(config)
        if config
        else Path(environ.get("HOME", str(Path.home()))) / ".config" / "gcloud"
    )
    return base / "application_default_credentials.json"


def _check_fields(data: Mapping[str, Any], path: str) -> None:
    kind = str(data["type"])
    where = f"{_KIND[kind]} {path}"
    missing = [k for k in _REQUIRED.get(kind, ()) if not data.get(k)]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}")
    if kind == "impersonated_service_account":
        source = data["source_credentials"]
        if not isinstance(source, dict) or source.get("type") not in _REQUIRED:
            raise ConfigError(
                f"{where}: source_credentials must be a service_account or authorized_user"
            )
        if not isinstance(data.get("delegates") or [], list):
            raise ConfigError(f"{where}: delegates is not a list")
        if source["type"] == "impersonated_service_account":
            raise ConfigError(f"{where}: source_credentials cannot be impersonated again")
        lacking = [k for k in _REQUIRED[str(source["type"])] if not source.get(k)]
        if lacking:
            raise ConfigError(f"{where}: source_credentials lacks {', '.join(lacking)}")
    elif kind == "external_account":
        credentials_external.check_external_account(data, where)
    elif kind == "external_account_authorized_user":
        credentials_external.check_external_authorized_user(data, where)


def _read_key(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"credentials file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"credentials file {path} is not JSON ({exc.msg}, line {exc.lineno})"
        ) from exc
    if not isinstance(data, dict) or data.get("type") not in _KEY_TYPES:
        raise ConfigError(
            f"credentials file {path} is not a Google credentials file "
            f'(its "type" should be one of {", ".join(_KEY_TYPES)})'
        )
    _check_fields(data, path)
    return data


class _Supplier(Protocol):
    async def get(self) -> str: ...

    async def close(self) -> None: ...


class _GcloudToken:
    """A gcloud-aio-auth ``Token`` (service accounts, users, the metadata server)."""

    def __init__(self, token: Token, source: str) -> None:
        self._token = token
        self._source = source
        self._first = anyio.Lock()

    async def get(self) -> str:
        try:
            if self._token.access_token is None:
                async with self._first:
                    if self._token.access_token is None:
                        await _acquire_first(self._token)
            value = await self._token.get()
        except aiohttp.ClientResponseError as exc:
            raise AuthError(
                f"Google refused the credentials from {self._source} "
                f"(HTTP {exc.status}: {exc.message.strip()[:200]})",
                status=exc.status,
                hint="check the key file, or create a new key / log in again",
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AuthError(
                f"cannot get an access token from {self._source}: {exc or type(exc).__name__}",
                retryable=True,
            ) from exc
        if not value:
            raise AuthError(f"no access token from {self._source}")
        return value

    async def close(self) -> None:
        await self._token.close()


class _Fetched:
    """Tokens caliban fetches itself (impersonation, federation), kept fresh."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Issued]],
        source: str,
        inner: _Supplier | None = None,
    ) -> None:
        self._tokens = Refreshing(fetch)
        self._source = source
        self._inner = inner

    async def get(self) -> str:
        try:
            return await self._tokens.get()
        except AuthError as exc:
            raise AuthError(
                f"{exc.message} (credentials: {self._source})",
                status=exc.status,
                retryable=exc.retryable,
                hint=exc.hint,
            ) from exc

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _gcloud(session: aiohttp.ClientSession, data: Mapping[str, Any], source: str) -> _GcloudToken:
    # The parsed key, not the path: Token would read the file on the event loop.
    token = Token(service_file=io.StringIO(json.dumps(data)), session=session, scopes=SCOPES)
    return _GcloudToken(token, source)


def _supplier(
    session: aiohttp.ClientSession,
    data: Mapping[str, Any],
    source: str,
    environ: Mapping[str, str],
    *,
    path: str,
) -> _Supplier:
    kind = data["type"]
    if kind == "impersonated_service_account":
        inner = _gcloud(session, data["source_credentials"], f"the source credentials of {source}")
        url = str(data["service_account_impersonation_url"])
        delegates = [str(d) for d in data.get("delegates") or ()]

        async def impersonated() -> Issued:
            return await impersonate(
                session, url, await inner.get(), scopes=SCOPES, delegates=delegates
            )

        return _Fetched(impersonated, source, inner)
    if kind == "external_account":
        where = f"{_KIND[kind]} {path}"
        if credentials_external.source_kind(data["credential_source"]) == "executable":
            credentials_executable.check_allowed(where, environ)
        federation = credentials_external.ExternalAccount(
            session, data, scopes=SCOPES, environ=environ
        )
        return _Fetched(federation.fetch, source)
    if kind == "external_account_authorized_user":
        return _Fetched(credentials_external.ExternalAuthorizedUser(session, data).fetch, source)
    return _gcloud(session, data, source)


class Credentials:
    """An access-token source for one session; tokens are cached and refreshed.

    ``quota_project`` is the project Google bills API calls to and checks quota
    against (sent as ``x-goog-user-project``): the one passed, else
    ``$GOOGLE_CLOUD_QUOTA_PROJECT``, else the file's ``quota_project_id``. User
    credentials need one: their OAuth client belongs to gcloud's own project.
    """

    def __init__(
        self,
        supplier: _Supplier,
        *,
        source: str,
        data: dict[str, Any],
        quota_project: str | None = None,
    ) -> None:
        self._supplier = supplier
        self.source = source
        self._data = data
        self.quota_project = quota_project

    @classmethod
    async def load(
        cls,
        session: aiohttp.ClientSession,
        *,
        key_file: str | None,
        environ: Mapping[str, str],
        quota_project: str | None = None,
    ) -> Credentials:
        path = key_file or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        source = f"key file {path}"
        if not path:
            adc = adc_path(environ)
            if await anyio.Path(adc).is_file():
                path, source = str(adc), f"application default credentials ({adc})"
        override = (quota_project or environ.get(QUOTA_PROJECT_ENV) or "").strip() or None
        if path:
            data = await anyio.to_thread.run_sync(_read_key, path)
            supplier = _supplier(session, data, source, environ, path=str(path))
            quota = override or str(data.get("quota_project_id") or "").strip() or None
            return cls(supplier, source=source, data=data, quota_project=quota)
        host = (
            environ.get("GCE_METADATA_HOST")
            or environ.get("GCE_METADATA_ROOT")
            or ("metadata.google.internal")
        )
        if not await _metadata_answers(session, host):
            raise AuthError(
                "no Google credentials found",
                hint="pass --cloud_key KEY.json, set GOOGLE_APPLICATION_CREDENTIALS, or run "
                "`gcloud auth application-default login`",
            )
        # An empty service file: the metadata server, whatever this process's own
        # environment says (gcloud-aio-auth would otherwise read os.environ itself).
        token = Token(service_file=io.StringIO("{}"), session=session, scopes=SCOPES)
        token.token_uri = (
            f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
            "?recursive=true"
        )
        source = f"metadata server {host}"
        return cls(_GcloudToken(token, source), source=source, data={}, quota_project=override)

    @property
    def kind(self) -> str:
        """The credentials file's ``type``, or ``metadata_server``."""
        return str(self._data.get("type") or "metadata_server")

    @property
    def project_id(self) -> str | None:
        value = self._data.get("project_id") or self._data.get("quota_project_id")
        return str(value) if value else None

    async def token(self) -> str:
        return await self._supplier.get()

    async def aclose(self) -> None:
        # The aiohttp session is shared and closed by its owner, not here.
        with anyio.CancelScope(shield=True):
            await self._supplier.close()


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError | OSError)


async def _acquire_first(token: Token) -> None:
    """The first token, retried only when retrying can help.

    gcloud-aio-auth retries every failure five times with up to a minute of
    backoff; a revoked key or a wrong client secret (4xx) would keep the user
    waiting for nothing. Later refreshes keep the library's own policy.
    """
    acquire = type(token).acquire_access_token.retry_with(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(4),
        wait=wait_random_exponential(multiplier=0.5, max=8),
    )
    await acquire(token)


async def _metadata_answers(session: aiohttp.ClientSession, host: str) -> bool:
    try:
        with anyio.fail_after(1.5):
            async with session.get(
                f"http://{host}/computeMetadata/v1/project/project-id",
                headers={"Metadata-Flavor": "Google"},
            ) as response:
                return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


def default_key_file(
    flag: str | None, environ: Mapping[str, str], configured: str | None
) -> str | None:
    """``--cloud_key``, else ``$GOOGLE_APPLICATION_CREDENTIALS``, else ``gcloud.cloud_key``."""
    return flag or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or configured or None
