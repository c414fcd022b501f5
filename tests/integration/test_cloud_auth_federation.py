"""Workload identity federation (external_account with file, URL, executable and AWS sources),
workforce identity (external_account_authorized_user) and service account impersonation,
against local STS, IAM Credentials and AWS metadata stand-ins."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from caliban.adapters.cloud.auth import Credentials
from caliban.errors import AuthError, ConfigError
from tests.fakes.federation import (
    AWS_SUBJECT,
    FakeFederation,
    workforce_audience,
    workload_audience,
)
from tests.fakes.oauth import FakeOAuth, write_credentials

JWT = "urn:ietf:params:oauth:token-type:jwt"
ALLOW = {"GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES": "1"}


def external(fed: FakeFederation, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": "external_account",
        "audience": workload_audience(),
        "subject_token_type": JWT,
        "token_url": f"{fed.url}/v1/token",
        "token_info_url": f"{fed.url}/v1/introspect",
        "credential_source": source,
        "universe_domain": "googleapis.com",
    }
    info.update(extra)
    return info


async def token_of(
    path: Path, environ: dict[str, str] | None = None, **kw: Any
) -> tuple[Credentials, str]:
    async with aiohttp.ClientSession() as http:
        creds = await Credentials.load(http, key_file=str(path), environ=environ or {}, **kw)
        try:
            return creds, await creds.token()
        finally:
            await creds.aclose()


def write(tmp_path: Path, info: dict[str, Any], name: str = "creds.json") -> Path:
    return write_credentials(tmp_path / name, info)


# -------------------------------------------------------------------------- file and URL
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_file_source_is_exchanged_at_sts(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth, fmt: str
) -> None:
    subject = federation.trust_subject()
    token_file = tmp_path / "oidc-token"
    if fmt == "text":
        token_file.write_text(subject + "\n")
        source: dict[str, Any] = {"file": str(token_file)}
    else:
        token_file.write_text(json.dumps({"id_token": subject}))
        source = {
            "file": str(token_file),
            "format": {"type": "json", "subject_token_field_name": "id_token"},
        }
    creds, token = await token_of(write(tmp_path, external(federation, source)))
    assert oauth_server.valid_token(token) and creds.kind == "external_account"
    [exchange] = federation.exchanges
    assert exchange.audience == workload_audience() and exchange.subject_token_type == JWT
    assert exchange.user_project is None and creds.quota_project is None


async def test_a_url_source_sends_its_headers_and_reads_the_json_field(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth
) -> None:
    federation.subject_url_body = json.dumps({"value": federation.trust_subject()})
    source = {
        "url": f"{federation.url}/subject",
        "headers": {"Metadata": "True"},
        "format": {"type": "json", "subject_token_field_name": "value"},
    }
    _, token = await token_of(write(tmp_path, external(federation, source)))
    assert oauth_server.valid_token(token) and federation.url_requests == 1
    without = dict(source, headers={})
    with pytest.raises(AuthError, match=r"subject token URL .* answered HTTP 400"):
        await token_of(write(tmp_path, external(federation, without)))


async def test_an_untrusted_subject_token_is_refused_with_the_sts_reason(
    tmp_path: Path, federation: FakeFederation
) -> None:
    token_file = tmp_path / "oidc-token"
    token_file.write_text("eyJnot-trusted")
    with pytest.raises(AuthError, match=r"security token service refused.*invalid_grant") as err:
        await token_of(write(tmp_path, external(federation, {"file": str(token_file)})))
    assert "eyJnot-trusted" not in str(err.value)
    assert f"(credentials: key file {tmp_path / 'creds.json'})" in str(err.value)
    assert not err.value.retryable


# ------------------------------------------------------------------------- impersonation
async def test_federation_then_impersonation_with_the_configured_lifetime(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth
) -> None:
    email = "trainer@test-proj.iam.gserviceaccount.com"
    federation.allow_impersonation(email, workload_audience())
    token_file = tmp_path / "oidc-token"
    token_file.write_text(federation.trust_subject())
    info = external(
        federation,
        {"file": str(token_file)},
        service_account_impersonation_url=federation.impersonation_url(email),
        service_account_impersonation={"token_lifetime_seconds": 1200},
    )
    _, token = await token_of(write(tmp_path, info))
    issued = oauth_server.issued_token(token)
    assert issued is not None and issued.subject == email and issued.grant == "impersonation"
    [call] = federation.impersonations
    assert call["lifetime"] == "1200s"
    assert call["scope"] == ["https://www.googleapis.com/auth/cloud-platform"]


# ---------------------------------------------------------------------------- executable
def _executable(
    tmp_path: Path, subject: str, *, success: bool = True, expires_in: int = 600
) -> Path:
    log = tmp_path / "runs.log"
    script = tmp_path / "get-token"
    response: dict[str, Any] = (
        {
            "version": 1,
            "success": True,
            "token_type": JWT,
            "id_token": subject,
            "expiration_time": int(time.time()) + expires_in,
        }
        if success
        else {"version": 1, "success": False, "code": "401", "message": "not logged in"}
    )
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({k: v for k, v in os.environ.items()"
        " if k.startswith('GOOGLE_EXTERNAL')}) + '\\n')\n"
        f"answer = {json.dumps(response)!r}\n"
        "out = os.environ.get('GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE')\n"
        "if out:\n"
        "    with open(out, 'w') as f:\n"
        "        f.write(answer)\n"
        "print(answer)\n"
    )
    script.chmod(stat.S_IRWXU)
    return script


def _runs(tmp_path: Path) -> list[dict[str, str]]:
    log = tmp_path / "runs.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_an_allowed_executable_runs_once_and_its_output_file_is_reused(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth
) -> None:
    script = _executable(tmp_path, federation.trust_subject())
    cache = tmp_path / "cache.json"
    source = {
        "executable": {
            "command": f"{script} --flag",
            "timeout_millis": 5000,
            "output_file": str(cache),
        }
    }
    path = write(tmp_path, external(federation, source))
    _, token = await token_of(path, ALLOW)
    assert oauth_server.valid_token(token)
    [run] = _runs(tmp_path)
    assert run["GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE"] == workload_audience()
    assert run["GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE"] == JWT
    assert run["GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE"] == "0"
    assert run["GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"] == str(cache)
    _, again = await token_of(path, ALLOW)  # a new process: the unexpired cached answer serves
    assert oauth_server.valid_token(again) and len(_runs(tmp_path)) == 1
    assert len(federation.exchanges) == 2


async def test_the_executable_runs_while_the_event_loop_keeps_serving(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth
) -> None:
    """The command asks a server living on this very event loop for its token: run with a
    blocking subprocess call, the loop could not answer it and the command would time out."""
    federation.subject_url_body = federation.trust_subject()
    script = tmp_path / "ask-the-loop"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, time, urllib.request\n"
        f"request = urllib.request.Request({federation.url + '/subject'!r}, "
        "headers={'Metadata': 'True'})\n"
        "token = urllib.request.urlopen(request, timeout=4).read().decode()\n"
        "print(json.dumps({'version': 1, 'success': True, 'id_token': token,\n"
        f"    'token_type': {JWT!r}, 'expiration_time': int(time.time()) + 600}}))\n"
    )
    script.chmod(stat.S_IRWXU)
    source = {"executable": {"command": str(script), "timeout_millis": 5000}}
    _, token = await token_of(write(tmp_path, external(federation, source)), ALLOW)
    assert oauth_server.valid_token(token) and federation.url_requests == 1


async def test_an_executable_that_reports_failure_or_is_not_allowed(
    tmp_path: Path, federation: FakeFederation
) -> None:
    script = _executable(tmp_path, "unused", success=False)
    path = write(tmp_path, external(federation, {"executable": {"command": str(script)}}))
    with pytest.raises(AuthError, match="reports a failure: code 401: not logged in"):
        await token_of(path, ALLOW)
    with pytest.raises(ConfigError, match="GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1"):
        await token_of(path, {})
    assert len(_runs(tmp_path)) == 1  # refused before running anything


# ----------------------------------------------------------------------------------- AWS
async def test_aws_through_imdsv2_and_a_signed_get_caller_identity(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth
) -> None:
    info = external(federation, federation.aws_source(), subject_token_type=AWS_SUBJECT)
    _, token = await token_of(write(tmp_path, info))
    assert oauth_server.valid_token(token)
    [exchange] = federation.exchanges
    assert exchange.subject_token_type == AWS_SUBJECT and exchange.aws_region == "us-east-2"
    assert federation.imds_requests == ["PUT token", "zone", "role", "keys"]
    # Keys that AWS does not know: the fake recomputes the signature and refuses.
    environ = {
        "AWS_REGION": "us-east-2",
        "AWS_ACCESS_KEY_ID": "AKIDX",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    with pytest.raises(AuthError, match="security token included in the request is invalid"):
        await token_of(write(tmp_path, info), environ)
    federation.aws_keys["AKIDX"] = "not-s"
    with pytest.raises(AuthError, match="signature we calculated does not match"):
        await token_of(write(tmp_path, info), environ)
    federation.aws_keys["AKIDX"] = "s"
    _, token = await token_of(write(tmp_path, info), environ)
    assert oauth_server.valid_token(token) and len(federation.imds_requests) == 4


# ------------------------------------------------------------------------------ workforce
async def test_a_workforce_pool_sends_its_user_project_unless_a_client_authenticates(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth
) -> None:
    token_file = tmp_path / "oidc-token"
    token_file.write_text(federation.trust_subject())
    info = external(
        federation,
        {"file": str(token_file)},
        audience=workforce_audience(),
        workforce_pool_user_project="billing-proj",
    )
    _, token = await token_of(write(tmp_path, info))
    assert oauth_server.is_user_token(token)
    client_id, secret = federation.add_client()
    await token_of(write(tmp_path, dict(info, client_id=client_id, client_secret=secret)))
    assert [(e.user_project, e.client_id) for e in federation.exchanges] == [
        ("billing-proj", None),
        (None, client_id),
    ]
    bad = dict(info, client_id=client_id, client_secret="wrong")
    with pytest.raises(AuthError, match=r"HTTP 401: invalid_client"):
        await token_of(write(tmp_path, bad))


async def test_external_account_authorized_user_refreshes_with_basic_auth(
    tmp_path: Path, federation: FakeFederation, oauth_server: FakeOAuth
) -> None:
    federation.rotate_refresh_tokens = True
    info = dict(federation.add_workforce_user(), quota_project_id="workforce-quota")
    creds, token = await token_of(write(tmp_path, info))
    assert oauth_server.is_user_token(token) and creds.quota_project == "workforce-quota"
    assert creds.kind == "external_account_authorized_user"
    with pytest.raises(AuthError, match="HTTP 400: invalid_grant"):  # the old token was rotated
        await token_of(write(tmp_path, info))
    with pytest.raises(AuthError, match="HTTP 401: invalid_client"):
        await token_of(write(tmp_path, dict(info, client_secret="nope")))


# ------------------------------------------------------------------------ unusable files
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"audience": None}, "lacks audience"),
        ({"token_url": None}, "lacks token_url"),
        ({"credential_source": {"nothing": 1}}, "names none of file, url, executable"),
        ({"credential_source": {"file": "x", "format": {"type": "xml"}}}, "must be"),
        (
            {"credential_source": {"file": "x", "format": {"type": "json"}}},
            "needs subject_token_field_name",
        ),
        ({"credential_source": {"environment_id": "aws2"}}, "only aws1"),
        ({"credential_source": {"environment_id": "aws1"}}, "regional_cred_verification_url"),
        ({"credential_source": {"executable": {}}}, "lacks a command"),
        (
            {"credential_source": {"executable": {"command": "x", "timeout_millis": 10}}},
            "timeout_millis must be 5000 to 120000",
        ),
        ({"workforce_pool_user_project": "p"}, "only for workforce pool audiences"),
        ({"credential_source": {"url": "http://x", "headers": ["a"]}}, "headers is not an object"),
        ({"credential_source": {"file": ""}}, "credential_source.file is empty"),
        (
            {"service_account_impersonation": {"token_lifetime_seconds": "1h"}},
            "token_lifetime_seconds must be 600 to 43200",
        ),
    ],
)
async def test_unusable_external_account_files(
    tmp_path: Path, federation: FakeFederation, change: dict[str, Any], message: str
) -> None:
    info = external(federation, {"file": str(tmp_path / "t")})
    info.update(change)
    info = {k: v for k, v in info.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        await token_of(write(tmp_path, info), ALLOW)
    assert federation.exchanges == []


async def test_unusable_workforce_user_file(tmp_path: Path, federation: FakeFederation) -> None:
    info = federation.add_workforce_user()
    del info["client_secret"], info["refresh_token"]
    with pytest.raises(
        ConfigError, match=r"workforce identity file .* lacks refresh_token, client_secret"
    ):
        await token_of(write(tmp_path, info))
