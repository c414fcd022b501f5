"""Google credentials through gcloud-aio-auth, with errors a user can act on.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from tenacity import retry_if_exception, stop_after_attempt, wait_random_exponential

from caliban.errors import AuthError, ConfigError, MissingExtra

try:  # optional: the [cloud] and [cluster] extras bring it
    from gcloud.aio.auth import Token
except ModuleNotFoundError:
    raise MissingExtra("cloud", feature="Google Cloud access", package="gcloud-aio-auth") from None

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_KEY_TYPES = (
    "service_account",
    "authorized_user",
    "impersonated_service_account",
    "external_account",
)


def adc_path(environ: Mapping[str, str]) -> Path:
    config = environ.get("CLOUDSDK_CONFIG")
    base = (
        Path(config)
        if config
        else Path(environ.get("HOME", str(Path.home()))) / ".config" / "gcloud"
    )
    return base / "application_default_credentials.json"


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
    if data["type"] == "service_account":
        missing = [k for k in ("private_key", "client_email") if not data.get(k)]
        if missing:
            raise ConfigError(f"service account key {path} lacks {', '.join(missing)}")
    return data


class Credentials:
    """An access-token source for one session; tokens are cached and refreshed."""

    def __init__(self, token: Token, *, source: str, data: dict[str, Any]) -> None:
        self._token = token
        self.source = source
        self._data = data
        self._first = anyio.Lock()

    @classmethod
    async def load(
        cls,
        session: aiohttp.ClientSession,
        *,
        key_file: str | None,
        environ: Mapping[str, str],
    ) -> Credentials:
        path = key_file or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        source = f"key file {path}"
        if not path:
            adc = adc_path(environ)
            if await anyio.Path(adc).is_file():
                path, source = str(adc), f"application default credentials ({adc})"
        if path:
            data = await anyio.to_thread.run_sync(_read_key, path)
            # The parsed key, not the path: Token would read the file on the event loop.
            token = Token(
                service_file=io.StringIO(json.dumps(data)), session=session, scopes=SCOPES
            )
            return cls(token, source=source, data=data)
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
        return cls(token, source=f"metadata server {host}", data={})

    @property
    def project_id(self) -> str | None:
        value = self._data.get("project_id") or self._data.get("quota_project_id")
        return str(value) if value else None

    async def token(self) -> str:
        try:
            if self._token.access_token is None:
                async with self._first:
                    if self._token.access_token is None:
                        await _acquire_first(self._token)
            value = await self._token.get()
        except aiohttp.ClientResponseError as exc:
            raise AuthError(
                f"Google refused the credentials from {self.source} "
                f"(HTTP {exc.status}: {exc.message.strip()[:200]})",
                status=exc.status,
                hint="check the key file, or create a new key / log in again",
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AuthError(
                f"cannot get an access token from {self.source}: {exc or type(exc).__name__}",
                retryable=True,
            ) from exc
        if not value:
            raise AuthError(f"no access token from {self.source}")
        return value

    async def aclose(self) -> None:
        # The aiohttp session is shared and closed by its owner, not here.
        with anyio.CancelScope(shield=True):
            await self._token.close()


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
