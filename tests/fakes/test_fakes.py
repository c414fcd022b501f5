"""The OAuth / GCE-metadata fake, driven by the real gcloud-aio-auth ``Token`` and by aiohttp.

The point is that the unmodified library gets tokens from the fake (only ``token_uri``
differs), and that the fake refuses what Google refuses, in Google's error format.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from gcloud.aio.auth import Token

from .oauth import (
    CLOUD_PLATFORM,
    JWT_BEARER,
    METADATA_TOKEN_PATH,
    FakeOAuth,
    make_authorized_user,
    make_service_account,
    write_credentials,
)
from .rest import VertexRest, job_body
from .vertex import FakeVertex

ServiceAccount = tuple[dict[str, str], rsa.RSAPrivateKey]


def test_service_account_json_shape() -> None:
    info, key = make_service_account("http://127.0.0.1:1/token", "my-proj")
    assert info["type"] == "service_account"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert info["client_email"].endswith("@my-proj.iam.gserviceaccount.com")
    assert info["token_uri"] == "http://127.0.0.1:1/token"
    assert {"project_id", "private_key_id", "client_id", "auth_uri"} <= info.keys()
    assert key.key_size == 2048
    user = make_authorized_user("http://x/token")
    assert user["type"] == "authorized_user"
    assert {"client_id", "client_secret", "refresh_token"} <= user.keys()


async def test_service_account_token_via_gcloud_aio_auth(
    oauth_server: FakeOAuth,
    service_account: ServiceAccount,
    google_token: Token,
) -> None:
    token = await google_token.get()
    assert token is not None and token.startswith("ya29.")
    assert oauth_server.valid_token(token)
    issued = oauth_server.issued[0]
    assert issued.grant == "jwt-bearer"
    assert issued.subject == service_account[0]["client_email"]
    assert CLOUD_PLATFORM in issued.scopes
    # Cached: a second get() does not go back to the server.
    assert await google_token.get() == token
    assert oauth_server.token_requests == 1
    assert await google_token.get_project() == "test-proj"


async def test_service_account_from_file_object(
    oauth_server: FakeOAuth, service_account: ServiceAccount, http_session: aiohttp.ClientSession
) -> None:
    handle = io.StringIO(json.dumps(service_account[0]))
    async with Token(service_file=handle, session=http_session, scopes=[CLOUD_PLATFORM]) as tok:
        token = await tok.get()
    assert token is not None and oauth_server.valid_token(token)
    assert not http_session.closed  # a shared session survives Token.close()


async def test_authorized_user_token(
    oauth_server: FakeOAuth, authorized_user_file: Path, http_session: aiohttp.ClientSession
) -> None:
    async with Token(service_file=str(authorized_user_file), session=http_session) as tok:
        token = await tok.get()
    assert token is not None and oauth_server.valid_token(token)
    assert oauth_server.issued[0].grant == "refresh_token"


async def test_gce_metadata_token(
    oauth_server: FakeOAuth,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No credentials anywhere -> gcloud-aio-auth falls back to the metadata server.
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    async with Token(session=http_session, scopes=[CLOUD_PLATFORM]) as tok:
        assert tok.token_type.value == "gce_metadata"
        tok.token_uri = oauth_server.metadata_token_url  # the metadata host is fixed at import
        token = await tok.get()
    assert token is not None and oauth_server.valid_token(token)
    assert oauth_server.issued[0].grant == "gce-metadata"
    base = f"{oauth_server.url}/computeMetadata/v1"
    flavor = {"Metadata-Flavor": "Google"}
    async with http_session.get(f"{base}/project/project-id", headers=flavor) as resp:
        assert (resp.status, await resp.text()) == (200, "test-proj")
        assert resp.headers["Metadata-Flavor"] == "Google"
    async with http_session.get(f"{base}/project/numeric-project-id", headers=flavor) as resp:
        assert await resp.text() == "123456789012"


async def test_metadata_requires_flavor_header(
    oauth_server: FakeOAuth, http_session: aiohttp.ClientSession
) -> None:
    for path in (METADATA_TOKEN_PATH, "/computeMetadata/v1/project/project-id"):
        async with http_session.get(oauth_server.url + path) as resp:
            assert resp.status == 403
    assert oauth_server.issued == []


@pytest.mark.usefixtures("fast_token_failures")
async def test_unregistered_key_is_invalid_grant(
    oauth_server: FakeOAuth, http_session: aiohttp.ClientSession
) -> None:
    info, _ = make_service_account(oauth_server.token_url)  # never registered
    async with Token(
        service_file=io.StringIO(json.dumps(info)), session=http_session, scopes=[CLOUD_PLATFORM]
    ) as tok:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await tok.get()
    assert caught.value.status == 400
    assert "invalid_grant" in caught.value.message and "account not found" in caught.value.message
    assert oauth_server.token_requests == 1  # one attempt, thanks to fast_token_failures


@pytest.mark.usefixtures("fast_token_failures")
async def test_wrong_key_is_bad_signature(
    oauth_server: FakeOAuth, service_account: ServiceAccount, http_session: aiohttp.ClientSession
) -> None:
    forged = dict(service_account[0])
    forged["private_key"] = make_service_account(oauth_server.token_url)[0]["private_key"]
    async with Token(
        service_file=io.StringIO(json.dumps(forged)), session=http_session, scopes=[CLOUD_PLATFORM]
    ) as tok:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await tok.get()
    assert caught.value.status == 400
    assert "Invalid JWT Signature" in caught.value.message


@pytest.mark.usefixtures("fast_token_failures")
async def test_missing_scope_is_invalid_scope(
    service_account_file: Path, http_session: aiohttp.ClientSession
) -> None:
    # Without scopes= gcloud-aio-auth sends an empty scope claim, which Google refuses.
    async with Token(service_file=str(service_account_file), session=http_session) as tok:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await tok.get()
    assert caught.value.status == 400 and "invalid_scope" in caught.value.message


@pytest.mark.usefixtures("fast_token_failures")
@pytest.mark.parametrize(
    ("field", "status", "error"),
    [("refresh_token", 400, "invalid_grant"), ("client_secret", 401, "invalid_client")],
)
async def test_authorized_user_bad_credentials(
    oauth_server: FakeOAuth,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
    field: str,
    status: int,
    error: str,
) -> None:
    info = oauth_server.add_authorized_user()
    info[field] = "wrong"
    path = write_credentials(tmp_path / "adc.json", info)
    async with Token(service_file=str(path), session=http_session) as tok:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await tok.get()
    assert caught.value.status == status and error in caught.value.message


async def test_jwt_checks_audience_and_expiry(
    oauth_server: FakeOAuth, service_account: ServiceAccount, http_session: aiohttp.ClientSession
) -> None:
    info, key = service_account
    now = int(time.time())
    good = {"iss": info["client_email"], "scope": CLOUD_PLATFORM, "iat": now, "exp": now + 3600}
    cases = {
        "audience": {**good, "aud": "https://oauth2.googleapis.com/token"},
        "short-lived": {
            **good,
            "aud": oauth_server.token_url,
            "iat": now - 7200,
            "exp": now - 3600,
        },
        "60 minutes": {**good, "aud": oauth_server.token_url, "exp": now + 7200},
    }
    for expected, claims in cases.items():
        assertion = jwt.encode(claims, key, algorithm="RS256")
        form = {"grant_type": JWT_BEARER, "assertion": assertion}
        async with http_session.post(oauth_server.token_url, data=form) as resp:
            body = await resp.json()
        assert resp.status == 400 and body["error"] == "invalid_grant", body
        assert expected in body["error_description"]
    async with http_session.post(oauth_server.token_url, data={"grant_type": "password"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "unsupported_grant_type"


@pytest.mark.usefixtures("instant_token_retries")
async def test_gcloud_retries_through_injected_failures(
    oauth_server: FakeOAuth, google_token: Token
) -> None:
    oauth_server.fail_next(2, 503)
    token = await google_token.get()
    assert token is not None and oauth_server.valid_token(token)
    assert oauth_server.token_requests == 3  # two 503s, then success


@pytest.mark.usefixtures("fast_token_failures")
async def test_injected_failure_reaches_the_client(
    oauth_server: FakeOAuth, google_token: Token
) -> None:
    oauth_server.fail_next(1, 500)
    with pytest.raises(aiohttp.ClientResponseError) as caught:
        await google_token.get()
    assert caught.value.status == 500
    assert await google_token.get() is not None  # the next attempt goes through


async def test_revoked_and_expired_tokens(oauth_server: FakeOAuth, google_token: Token) -> None:
    token = await google_token.get()
    assert token is not None and oauth_server.valid_token(token)
    oauth_server.expire(token)
    assert not oauth_server.valid_token(token)
    assert not oauth_server.valid_token("ya29.never-issued")
    oauth_server.revoke()
    assert all(t.revoked for t in oauth_server.issued)


async def test_vertex_accepts_tokens_from_the_oauth_fake(
    oauth_server: FakeOAuth,
    vertex_server: FakeVertex,
    google_token: Token,
    http_session: aiohttp.ClientSession,
) -> None:
    token = await google_token.get()
    rest = VertexRest(http_session, vertex_server.url, token)
    assert (await rest.create(job_body())).status == 200
    oauth_server.revoke(token)
    reply = await rest.create(job_body())
    assert reply.status == 401 and reply.error["status"] == "UNAUTHENTICATED"
    assert "invalid authentication credentials" in reply.error["message"]
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    rest.token = None
    reply = await rest.list_jobs()
    assert reply.status == 401 and "missing required authentication" in reply.error["message"]
    assert vertex_server.creates_accepted == 1 and vertex_server.unauthenticated == 2


async def test_vertex_without_validator_accepts_any_bearer(
    http_session: aiohttp.ClientSession,
) -> None:
    async with FakeVertex() as vertex:
        rest = VertexRest(http_session, vertex.url, "anything")
        assert (await rest.create(job_body())).status == 200
        rest.token = None
        assert (await rest.create(job_body())).status == 401
