"""A fake Google OAuth2 token endpoint and GCE metadata server.

gcloud-aio-auth's ``Token`` reads ``token_uri`` from the credentials file, so a service-account
or authorized_user JSON made by :func:`make_service_account` / :func:`make_authorized_user`
points the unmodified library at this server. For the GCE path the client's ``token_uri``
attribute is set to :attr:`FakeOAuth.metadata_token_url` (the metadata host is read at import
time, so the environment variable route is impractical inside a test run).

Tokens it hands out are remembered; other fakes check ``Authorization: Bearer`` headers with
:meth:`FakeOAuth.valid_token`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .google_http import FakeServer

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
METADATA_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"

# Grants whose tokens stand for a person: Google wants a quota project with them.
USER_GRANTS = frozenset({"refresh_token", "workforce-refresh", "workforce-exchange"})

# Google caps a self-signed assertion's lifetime at one hour (exp - iat).
_MAX_ASSERTION_LIFETIME = 3600


def make_service_account(
    token_uri: str, project_id: str = "test-proj", *, name: str = "caliban-test"
) -> tuple[dict[str, str], rsa.RSAPrivateKey]:
    """A service-account key file's JSON (as a dict) with a freshly generated RSA key.

    The shape matches what ``gcloud iam service-accounts keys create`` writes, except that
    ``token_uri`` is the fake's URL. Returns the dict and the private key object.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = f"{name}@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(9 * 10**20) + 10**20),  # 21 digits like Google's
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": (
            "https://www.googleapis.com/robot/v1/metadata/x509/" + quote(email, safe="")
        ),
        "universe_domain": "googleapis.com",
    }
    return info, key


def make_authorized_user(token_uri: str, quota_project_id: str | None = None) -> dict[str, str]:
    """An ``application_default_credentials.json`` of type authorized_user (gcloud ADC login).

    Real ADC files carry no ``token_uri``; gcloud-aio-auth honours one if present, which is how
    the fake gets the refresh request. gcloud writes ``quota_project_id`` when a project is set
    (``gcloud auth application-default set-quota-project``).
    """
    client_id = f"{secrets.randbelow(10**12)}-{secrets.token_hex(16)}.apps.googleusercontent.com"
    info = {
        "type": "authorized_user",
        "client_id": client_id,
        "client_secret": secrets.token_urlsafe(18),
        "refresh_token": "1//" + secrets.token_urlsafe(64),
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }
    if quota_project_id:
        info["quota_project_id"] = quota_project_id
    return info


def write_credentials(path: Path, info: dict[str, str]) -> Path:
    """Write a credentials dict as JSON (mode 0600 like gcloud does) and return the path."""
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    return path


@dataclass
class IssuedToken:
    """One access token the fake handed out."""

    token: str
    subject: str  # client_email, OAuth client_id, or the GCE default service account
    grant: str  # "jwt-bearer", "refresh_token" or "gce-metadata"
    scopes: tuple[str, ...]
    expires_at: float  # time.time() based
    revoked: bool = False


@dataclass
class _User:
    client_secret: str
    refresh_token: str


@dataclass
class _ServiceAccount:
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)  # private_key_id -> key


class FakeOAuth(FakeServer):
    """OAuth2 token endpoint (``POST /token``) plus the GCE metadata token/project endpoints.

    Args:
        expires_in: lifetime in seconds of the access tokens it issues.
        project_id: answered by ``/computeMetadata/v1/project/project-id``.
        project_number: answered by ``.../project/numeric-project-id``.
        required_scope: a jwt-bearer assertion must list this scope (None: any scope).

    Knobs: :meth:`fail_next`, :meth:`revoke`, :meth:`expire`.
    Counters: ``token_requests``, ``metadata_requests``, ``rejected``; ``issued`` lists tokens.
    """

    def __init__(
        self,
        *,
        expires_in: int = 3599,
        project_id: str = "test-proj",
        project_number: str = "123456789012",
        required_scope: str | None = CLOUD_PLATFORM,
    ) -> None:
        super().__init__()
        self.expires_in = expires_in
        self.project_id = project_id
        self.project_number = project_number
        self.required_scope = required_scope
        self.metadata_email = f"{project_number}-compute@developer.gserviceaccount.com"
        self.issued: list[IssuedToken] = []
        self.token_requests = 0
        self.metadata_requests = 0
        self.rejected = 0
        self._by_token: dict[str, IssuedToken] = {}
        self._accounts: dict[str, _ServiceAccount] = {}
        self._users: dict[str, _User] = {}
        self._fail_next: list[int] = []

    # ----------------------------------------------------------------- URLs and registration
    @property
    def token_url(self) -> str:
        """The value to put in a credentials file's ``token_uri``."""
        return f"{self.url}/token"

    @property
    def metadata_token_url(self) -> str:
        """Assign to ``Token.token_uri`` of a GCE-metadata ``Token`` (no credentials file)."""
        return f"{self.url}{METADATA_TOKEN_PATH}?recursive=true"

    @property
    def metadata_host(self) -> str:
        """Value for ``GCE_METADATA_HOST`` (only useful before gcloud.aio.auth is imported)."""
        return f"{self.host}:{self.port}"

    def register_service_account(self, info: dict[str, str]) -> None:
        """Trust the public half of ``info["private_key"]`` for ``info["client_email"]``."""
        private = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise TypeError("service-account keys are RSA")
        account = self._accounts.setdefault(info["client_email"], _ServiceAccount())
        account.keys[info["private_key_id"]] = private.public_key()

    def add_service_account(
        self, project_id: str = "test-proj", *, name: str = "caliban-test"
    ) -> tuple[dict[str, str], rsa.RSAPrivateKey]:
        """Make a key file pointing at this server and register it (the usual test setup)."""
        info, key = make_service_account(self.token_url, project_id, name=name)
        self.register_service_account(info)
        return info, key

    def register_authorized_user(self, info: dict[str, str]) -> None:
        """Accept refresh requests carrying this client id, secret and refresh token."""
        self._users[info["client_id"]] = _User(info["client_secret"], info["refresh_token"])

    def add_authorized_user(self, quota_project_id: str | None = None) -> dict[str, str]:
        """Make an authorized_user file pointing at this server and register it."""
        info = make_authorized_user(self.token_url, quota_project_id)
        self.register_authorized_user(info)
        return info

    # ------------------------------------------------------------------------------- knobs
    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` token requests (any grant, metadata too) with ``status``."""
        self._fail_next.extend([status] * n)

    def revoke(self, token: str | None = None) -> None:
        """Invalidate one issued token, or all of them."""
        for issued in self.issued:
            if token is None or issued.token == token:
                issued.revoked = True

    def expire(self, token: str | None = None) -> None:
        """Make one issued token (or all) expired, as if its hour had passed."""
        for issued in self.issued:
            if token is None or issued.token == token:
                issued.expires_at = time.time() - 1

    def valid_token(self, token: str) -> bool:
        """True if ``token`` was issued here, is not expired and not revoked."""
        issued = self._by_token.get(token)
        return issued is not None and not issued.revoked and issued.expires_at > time.time()

    def issued_token(self, token: str) -> IssuedToken | None:
        """What this server (or a fake sharing its registry) knows about ``token``."""
        return self._by_token.get(token)

    def is_user_token(self, token: str) -> bool:
        """True for a person's token (a refresh grant, a workforce identity), not a service's.

        Google bills such calls to a quota project the caller names, since the OAuth client
        that issued the token belongs to someone else's project.
        """
        issued = self._by_token.get(token)
        return issued is not None and issued.grant in USER_GRANTS

    def issue(self, subject: str, grant: str, scopes: tuple[str, ...]) -> dict[str, Any]:
        """Mint a token other fakes (STS, IAM Credentials) hand out, valid everywhere."""
        return self._issue(subject, grant, scopes)

    # ---------------------------------------------------------------------------- the app
    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get(METADATA_TOKEN_PATH, self._metadata_token)
        app.router.add_get("/computeMetadata/v1/project/project-id", self._metadata_project)
        app.router.add_get(
            "/computeMetadata/v1/project/numeric-project-id", self._metadata_project_number
        )
        app.router.add_get(
            "/computeMetadata/v1/instance/service-accounts/default/email", self._metadata_email
        )
        return app

    def _issue(self, subject: str, grant: str, scopes: tuple[str, ...]) -> dict[str, Any]:
        # Real tokens are opaque "ya29." strings; randomness keeps tests from hard-coding them.
        token = "ya29." + secrets.token_urlsafe(48)
        issued = IssuedToken(token, subject, grant, scopes, time.time() + self.expires_in)
        self.issued.append(issued)
        self._by_token[token] = issued
        return {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}

    def _oauth_error(self, status: int, error: str, description: str) -> web.Response:
        self.rejected += 1
        return web.json_response({"error": error, "error_description": description}, status=status)

    def _injected_failure(self) -> int | None:
        return self._fail_next.pop(0) if self._fail_next else None

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        failure = self._injected_failure()
        if failure is not None:
            kind = "invalid_grant" if failure < 500 else "internal_failure"
            return self._oauth_error(failure, kind, "injected failure (FakeOAuth.fail_next)")
        grant_type = _field(form, "grant_type")
        if grant_type == JWT_BEARER:
            return self._jwt_bearer(request, _field(form, "assertion"))
        if grant_type == "refresh_token":
            return self._refresh(form)
        return self._oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _jwt_bearer(self, request: web.Request, assertion: str) -> web.Response:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return self._oauth_error(400, "invalid_grant", "Invalid JWT: could not be parsed.")
        account = self._accounts.get(str(unverified.get("iss", "")))
        if account is None:
            return self._oauth_error(400, "invalid_grant", "Invalid grant: account not found")
        kid = header.get("kid")
        # gcloud-aio-auth signs without a "kid" header, so without one every key is tried.
        keys = [account.keys[kid]] if kid in account.keys else list(account.keys.values())
        # The audience must be the URL the client posted to (what it had as token_uri).
        audience = str(request.url.with_query(None))
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    assertion,
                    key,
                    algorithms=["RS256"],
                    audience=audience,
                    options={"require": ["iss", "aud", "exp", "iat"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                return self._oauth_error(
                    400, "invalid_grant", f"Invalid JWT: Failed audience check. Expected {audience}"
                )
            except jwt.PyJWTError as exc:  # expired, immature, missing claims
                return self._oauth_error(
                    400,
                    "invalid_grant",
                    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                    "reasonable timeframe. Check your iat and exp values in the JWT claim. "
                    f"({exc})",
                )
        if claims is None:
            return self._oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        if int(claims["exp"]) - int(claims["iat"]) > _MAX_ASSERTION_LIFETIME:
            return self._oauth_error(
                400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes)"
            )
        scopes = tuple(str(claims.get("scope", "")).split())
        if self.required_scope is not None and self.required_scope not in scopes:
            return self._oauth_error(
                400, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        return web.json_response(self._issue(str(claims["iss"]), "jwt-bearer", scopes))

    def _refresh(self, form: Mapping[str, object]) -> web.Response:
        client_id = _field(form, "client_id")
        user = self._users.get(client_id)
        if user is None or user.client_secret != _field(form, "client_secret"):
            # Google answers a wrong client with 401 invalid_client, not 400.
            return self._oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if user.refresh_token != _field(form, "refresh_token"):
            return self._oauth_error(400, "invalid_grant", "Bad Request")
        return web.json_response(self._issue(client_id, "refresh_token", (CLOUD_PLATFORM,)))

    def _check_metadata_request(self, request: web.Request) -> web.Response | None:
        self.metadata_requests += 1
        # The real server refuses requests without the header (a guard against SSRF).
        if request.headers.get("Metadata-Flavor") != "Google":
            self.rejected += 1
            return web.Response(
                status=403,
                text="Missing required header: Metadata-Flavor\n",
                headers={"Metadata-Flavor": "Google"},
            )
        return None

    def _metadata_text(self, request: web.Request, text: str) -> web.Response:
        refused = self._check_metadata_request(request)
        if refused is not None:
            return refused
        return web.Response(text=text, headers={"Metadata-Flavor": "Google"})

    async def _metadata_token(self, request: web.Request) -> web.Response:
        refused = self._check_metadata_request(request)
        if refused is not None:
            return refused
        failure = self._injected_failure()
        if failure is not None:
            self.rejected += 1
            return web.Response(status=failure, text="injected failure (FakeOAuth.fail_next)\n")
        body = self._issue(self.metadata_email, "gce-metadata", (CLOUD_PLATFORM,))
        return web.json_response(body, headers={"Metadata-Flavor": "Google"})

    async def _metadata_project(self, request: web.Request) -> web.Response:
        return self._metadata_text(request, self.project_id)

    async def _metadata_project_number(self, request: web.Request) -> web.Response:
        return self._metadata_text(request, self.project_number)

    async def _metadata_email(self, request: web.Request) -> web.Response:
        return self._metadata_text(request, self.metadata_email)


def _field(form: Mapping[str, object], name: str) -> str:
    """A form field as text ("" when absent or when a file was uploaded under that name)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""
