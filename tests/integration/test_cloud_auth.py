"""Credentials through gcloud-aio-auth against the local token server: where they come from,
and how a refusal surfaces."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from caliban.cloud.auth import Credentials
from caliban.errors import AuthError, ConfigError
from tests.fakes.oauth import FakeOAuth, write_credentials
from tests.integration.cloud_helpers import (  # noqa: F401  (fixtures)
    authorized_user_file,
    oauth_server,
    service_account,
    service_account_file,
)


async def _token(key: str | None, environ: dict[str, str]) -> tuple[Credentials, str]:
    async with aiohttp.ClientSession() as http:
        creds = await Credentials.load(http, key_file=key, environ=environ)
        try:
            return creds, await creds.token()
        finally:
            await creds.aclose()


async def test_key_file_flag_then_environment_then_adc(
    tmp_path: Path,
    oauth_server: FakeOAuth,
    service_account_file: Path,
    authorized_user_file: Path,
) -> None:
    creds, token = await _token(str(service_account_file), {"HOME": str(tmp_path)})
    assert oauth_server.valid_token(token) and creds.project_id == "test-proj"
    assert creds.source == f"key file {service_account_file}"
    creds, _ = await _token(None, {"GOOGLE_APPLICATION_CREDENTIALS": str(service_account_file)})
    assert creds.source == f"key file {service_account_file}"
    home = tmp_path / "home"
    adc = home / ".config" / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text(authorized_user_file.read_text())
    creds, token = await _token(None, {"HOME": str(home)})
    assert creds.source.startswith("application default credentials") and token
    assert [t.grant for t in oauth_server.issued] == ["jwt-bearer", "jwt-bearer", "refresh_token"]


async def test_the_metadata_server_when_nothing_else(
    tmp_path: Path, oauth_server: FakeOAuth
) -> None:
    env = {"HOME": str(tmp_path), "GCE_METADATA_HOST": oauth_server.metadata_host}
    creds, token = await _token(None, env)
    assert creds.source == f"metadata server {oauth_server.metadata_host}"
    assert oauth_server.valid_token(token)
    with pytest.raises(AuthError, match="no Google credentials found"):
        await _token(None, {"HOME": str(tmp_path), "GCE_METADATA_HOST": "127.0.0.1:9"})


async def test_a_refusal_is_immediate_and_transient_failures_are_retried(
    tmp_path: Path, oauth_server: FakeOAuth, service_account_file: Path
) -> None:
    oauth_server.fail_next(2, 503)
    _, token = await _token(str(service_account_file), {})
    assert oauth_server.valid_token(token) and oauth_server.token_requests == 3
    oauth_server.fail_next(1, 400)
    with pytest.raises(AuthError, match=r"refused the credentials .* \(HTTP 400") as caught:
        await _token(str(service_account_file), {})
    assert caught.value.hint == "check the key file, or create a new key / log in again"
    assert oauth_server.token_requests == 4  # one try: a 4xx will not change


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{oops", "is not JSON"),
        ('{"type": "api_key"}', "is not a Google credentials file"),
        ('{"type": "service_account", "client_email": "a@b"}', "lacks private_key"),
    ],
)
async def test_unusable_key_files(tmp_path: Path, content: str | None, message: str) -> None:
    key = tmp_path / "key.json"
    if content is not None:
        key.write_text(content)
    with pytest.raises(ConfigError, match=message):
        await _token(str(key), {})


async def test_token_uri_of_the_key_file_is_honoured(
    tmp_path: Path, service_account: tuple[dict[str, str], object]
) -> None:
    async with FakeOAuth() as other:
        info = dict(service_account[0], token_uri=other.token_url)
        other.register_service_account(info)
        key = write_credentials(tmp_path / "other.json", info)
        _, token = await _token(str(key), {})
        assert other.valid_token(token) and other.token_requests == 1
