"""Credentials against the local token, IAM Credentials and Vertex servers: where they come
from, impersonation, the quota project every Google API call names, and how refusals and
unusable files surface. Federation has its own module (test_cloud_auth_federation.py)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from caliban.adapters.cloud.auth import Credentials
from caliban.adapters.cloud.http import GoogleApi
from caliban.errors import AuthError, ConfigError
from tests.conftest import MakeProject
from tests.fakes.federation import FakeFederation
from tests.fakes.oauth import FakeOAuth, write_credentials
from tests.fakes.vertex import FakeVertex
from tests.integration.cloud_helpers import IMAGE, caliban, cli_env


async def _token(
    key: str | None, environ: dict[str, str], quota_project: str | None = None
) -> tuple[Credentials, str]:
    async with aiohttp.ClientSession() as http:
        creds = await Credentials.load(
            http, key_file=key, environ=environ, quota_project=quota_project
        )
        try:
            return creds, await creds.token()
        finally:
            await creds.aclose()


async def test_key_file_flag_then_environment_then_adc(
    tmp_path: Path, oauth_server: FakeOAuth, service_account_file: Path, authorized_user_file: Path
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
        ('["service_account"]', "is not a Google credentials file"),
        ('{"type": "authorized_user", "client_id": "c"}', "lacks client_secret, refresh_token"),
        (
            '{"type": "impersonated_service_account", "source_credentials": {}}',
            "lacks service_account_impersonation_url",
        ),
        (
            '{"type": "impersonated_service_account", "service_account_impersonation_url": "u",'
            ' "source_credentials": {"type": "external_account"}}',
            "source_credentials must be a service_account or authorized_user",
        ),
        (
            '{"type": "impersonated_service_account", "service_account_impersonation_url": "u",'
            ' "source_credentials": {"type": "authorized_user", "client_id": "c"}}',
            "source_credentials lacks client_secret, refresh_token",
        ),
        ('{"type": "external_account"}', "lacks audience, subject_token_type"),
        ('{"type": "external_account_authorized_user"}', "lacks refresh_token, token_url"),
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


# -------------------------------------------------------------------------- impersonation
@pytest.mark.parametrize("source_kind", ["service_account", "authorized_user"])
async def test_impersonation_from_a_service_account_or_a_user(
    tmp_path: Path,
    oauth_server: FakeOAuth,
    federation: FakeFederation,
    service_account: tuple[dict[str, str], object],
    source_kind: str,
) -> None:
    source = (
        service_account[0]
        if source_kind == "service_account"
        else oauth_server.add_authorized_user()
    )
    principal = source.get("client_email") or source["client_id"]
    target = "trainer@test-proj.iam.gserviceaccount.com"
    info = {
        "type": "impersonated_service_account",
        "service_account_impersonation_url": federation.impersonation_url(target),
        "delegates": [],
        "source_credentials": source,
        "quota_project_id": "imp-quota",
    }
    key = write_credentials(tmp_path / "impersonated.json", info)  # type: ignore[arg-type]
    with pytest.raises(AuthError, match=r"iam.serviceAccounts.getAccessToken' denied") as denied:
        await _token(str(key), {})
    assert denied.value.status == 403 and not denied.value.retryable
    federation.allow_impersonation(target, principal)
    creds, token = await _token(str(key), {})
    issued = oauth_server.issued_token(token)
    assert issued is not None and (issued.subject, issued.grant) == (target, "impersonation")
    assert creds.quota_project == "imp-quota" and creds.kind == "impersonated_service_account"
    assert [call["by"] for call in federation.impersonations] == [principal]


# --------------------------------------------------------------------------- quota project
async def test_the_quota_project_comes_from_the_flag_then_the_environment_then_the_file(
    tmp_path: Path, oauth_server: FakeOAuth, service_account_file: Path
) -> None:
    user = write_credentials(tmp_path / "adc.json", oauth_server.add_authorized_user("from-file"))
    env = {"GOOGLE_CLOUD_QUOTA_PROJECT": "from-env"}
    assert (await _token(str(user), {}))[0].quota_project == "from-file"
    assert (await _token(str(user), env))[0].quota_project == "from-env"
    assert (await _token(str(user), env, "from-flag"))[0].quota_project == "from-flag"
    assert (await _token(str(service_account_file), {}))[0].quota_project is None
    metadata = {"HOME": str(tmp_path), "GCE_METADATA_HOST": oauth_server.metadata_host, **env}
    assert (await _token(None, metadata))[0].quota_project == "from-env"


async def _list_jobs(key: Path, environ: dict[str, str], vertex: FakeVertex) -> object:
    async with aiohttp.ClientSession() as http:
        creds = await Credentials.load(http, key_file=str(key), environ=environ)
        try:
            api = GoogleApi(http, creds)
            url = f"{vertex.url}/v1/projects/test-proj/locations/us-central1/customJobs"
            return await api.call("GET", url, what="list jobs")
        finally:
            await creds.aclose()


async def test_user_credentials_need_a_quota_project_and_name_it_on_every_call(
    tmp_path: Path, oauth_server: FakeOAuth, vertex_server: FakeVertex, service_account_file: Path
) -> None:
    vertex_server.user_tokens = oauth_server.is_user_token
    bare = write_credentials(tmp_path / "bare.json", oauth_server.add_authorized_user())
    with pytest.raises(AuthError, match="requires a quota project") as refused:
        await _list_jobs(bare, {}, vertex_server)
    assert refused.value.status == 403
    assert refused.value.hint is not None and "--quota_project" in refused.value.hint
    await _list_jobs(bare, {"GOOGLE_CLOUD_QUOTA_PROJECT": "billing"}, vertex_server)
    adc = write_credentials(tmp_path / "adc.json", oauth_server.add_authorized_user("test-proj"))
    await _list_jobs(adc, {}, vertex_server)
    await _list_jobs(service_account_file, {}, vertex_server)  # a service needs none
    assert vertex_server.quota_projects == [None, "billing", "test-proj", None]


# --------------------------------------------------------------------------------- the CLI
async def test_the_quota_project_flag_reaches_vertex(
    tmp_path: Path, make_project: MakeProject, oauth_server: FakeOAuth, vertex_server: FakeVertex
) -> None:
    vertex_server.user_tokens = oauth_server.is_user_token
    user = write_credentials(tmp_path / "adc.json", oauth_server.add_authorized_user())
    folder = make_project()
    env = cli_env(tmp_path, user, vertex_server)
    env.pop("GOOGLE_CLOUD_QUOTA_PROJECT", None)
    args = ["cloud", "--project_id", "test-proj", "--image_tag", IMAGE, "job.py"]
    refused = await caliban(args, cwd=folder, env=env)
    assert refused.returncode == 1 and "requires a quota project" in refused.stderr
    assert "Traceback" not in refused.stderr and vertex_server.jobs == []
    done = await caliban([*args[:1], "--quota_project", "billing", *args[1:]], cwd=folder, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(vertex_server.jobs) == 1 and "billing" in vertex_server.quota_projects


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"type": "external_account_authorized_user", "client_id": "c"}', "lacks refresh_token"),
        ('{"type": "frobnicated"}', "is not a Google credentials file"),
        ("{oops", "is not JSON"),
        (
            json.dumps(
                {
                    "type": "external_account",
                    "audience": "//iam.googleapis.com/projects/1/locations/global/"
                    "workloadIdentityPools/p/providers/q",
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "token_url": "http://127.0.0.1:9/v1/token",
                    "credential_source": {"executable": {"command": "/bin/get-token"}},
                }
            ),
            "set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1",
        ),
    ],
)
async def test_an_unusable_credentials_file_is_one_line_and_exit_2(
    tmp_path: Path, make_project: MakeProject, vertex_server: FakeVertex, content: str, needle: str
) -> None:
    key = tmp_path / "creds.json"
    key.write_text(content)
    folder = make_project()
    env = cli_env(tmp_path, key, vertex_server)
    env.pop("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", None)
    result = await caliban(
        ["cloud", "--project_id", "test-proj", "--image_tag", IMAGE, "job.py"], cwd=folder, env=env
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 2
    assert vertex_server.creates_received == 0
    assert not (tmp_path / "home" / "caliban.db").exists()
