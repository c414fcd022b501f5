"""Fakes for federated and impersonated Google credentials, on one local server.

- Google STS (``POST /v1/token``): RFC 8693 token exchange of a workload identity pool's
  subject token for a Google access token; workforce pools want a ``userProject`` option or
  client basic auth. AWS subject tokens are checked as AWS would: the SigV4 signature of the
  serialized GetCallerIdentity request is recomputed with the secret the fake IMDS handed out.
- Workforce identity refresh (``POST /v1/oauthtoken``): refresh-token grant with the OAuth
  client's basic auth, as ``external_account_authorized_user`` files use.
- IAM Credentials (``POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken``).
- The AWS EC2 metadata service, IMDSv2 only (``PUT /latest/api/token`` then the token header).
- A subject-token URL (``GET /subject``) answering text or JSON, behind a required header.

Every token is minted by the :class:`~tests.fakes.oauth.FakeOAuth` given, so the Vertex fake
accepts them through ``oauth.valid_token`` like any other.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from aiohttp import web

from .google_http import FakeServer, error_info, rpc_error
from .oauth import CLOUD_PLATFORM, FakeOAuth

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
AWS_SUBJECT = "urn:ietf:params:aws:token-type:aws4_request"
GET_ACCESS_TOKEN = "iam.serviceAccounts.getAccessToken"
_WORKFORCE = re.compile(r"//iam\.googleapis\.com/locations/[^/]+/workforcePools/.+")


def workload_audience(pool: str = "pool", provider: str = "provider") -> str:
    return (
        "//iam.googleapis.com/projects/123456789012/locations/global/"
        f"workloadIdentityPools/{pool}/providers/{provider}"
    )


def workforce_audience(pool: str = "workforce", provider: str = "provider") -> str:
    return f"//iam.googleapis.com/locations/global/workforcePools/{pool}/providers/{provider}"


@dataclass
class Exchange:
    """One STS exchange the fake accepted."""

    audience: str
    subject_token_type: str
    user_project: str | None
    client_id: str | None
    aws_region: str | None = None


@dataclass
class _WorkforceUser:
    client_id: str
    client_secret: str
    refresh_token: str


@dataclass
class FakeFederation(FakeServer):
    """STS, IAM Credentials, AWS IMDSv2 and a subject-token URL; see the module docstring."""

    oauth: FakeOAuth
    subject_tokens: set[str] = field(default_factory=set)  # trusted OIDC/SAML subject tokens
    clients: dict[str, str] = field(default_factory=dict)  # OAuth client id -> secret
    impersonators: dict[str, set[str]] = field(default_factory=dict)  # email -> subjects
    aws_keys: dict[str, str] = field(default_factory=dict)  # access key id -> secret
    aws_region_zone: str = "us-east-2b"
    rotate_refresh_tokens: bool = False
    exchanges: list[Exchange] = field(default_factory=list)
    impersonations: list[dict[str, Any]] = field(default_factory=list)
    imds_requests: list[str] = field(default_factory=list)
    url_requests: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        self.subject_url_header = ("Metadata", "True")
        self.subject_url_body: str = ""
        self._imds_sessions: set[str] = set()
        self._role = "caliban-role"
        self._workforce: dict[str, _WorkforceUser] = {}

    # ------------------------------------------------------------------ registration
    def trust_subject(self) -> str:
        """A fresh OIDC-like subject token the STS will accept."""
        token = "eyJ" + secrets.token_urlsafe(40)
        self.subject_tokens.add(token)
        return token

    def add_client(self) -> tuple[str, str]:
        client_id, secret = secrets.token_hex(8), secrets.token_urlsafe(18)
        self.clients[client_id] = secret
        return client_id, secret

    def allow_impersonation(self, email: str, subject: str) -> None:
        """Let the principal ``subject`` (an email or STS audience) mint tokens for ``email``."""
        self.impersonators.setdefault(email, set()).add(subject)

    def impersonation_url(self, email: str) -> str:
        return f"{self.url}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"

    def add_workforce_user(self) -> dict[str, str]:
        """An ``external_account_authorized_user`` file's fields, registered here."""
        client_id, secret = self.add_client()
        user = _WorkforceUser(client_id, secret, "ya29.refresh-" + secrets.token_urlsafe(32))
        self._workforce[client_id] = user
        return {
            "type": "external_account_authorized_user",
            "audience": workforce_audience(),
            "refresh_token": user.refresh_token,
            "token_url": f"{self.url}/v1/oauthtoken",
            "token_info_url": f"{self.url}/v1/introspect",
            "client_id": client_id,
            "client_secret": secret,
            "revoke_url": f"{self.url}/v1/oauth/revoke",
            "universe_domain": "googleapis.com",
        }

    def aws_source(self) -> dict[str, str]:
        """An AWS ``credential_source`` pointing at this fake's IMDS."""
        meta = f"{self.url}/latest/meta-data"
        return {
            "environment_id": "aws1",
            "region_url": f"{meta}/placement/availability-zone",
            "url": f"{meta}/iam/security-credentials",
            "regional_cred_verification_url": (
                "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
            ),
            "imdsv2_session_token_url": f"{self.url}/latest/api/token",
        }

    # ---------------------------------------------------------------------- the app
    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/token", self._exchange)
        app.router.add_post("/v1/oauthtoken", self._workforce_refresh)
        app.router.add_post("/v1/projects/{project}/serviceAccounts/{target}", self._impersonate)
        app.router.add_put("/latest/api/token", self._imds_session)
        app.router.add_get("/latest/meta-data/placement/availability-zone", self._imds_zone)
        app.router.add_get("/latest/meta-data/iam/security-credentials", self._imds_role)
        app.router.add_get("/latest/meta-data/iam/security-credentials/{role}", self._imds_keys)
        app.router.add_get("/subject", self._subject)
        return app

    @staticmethod
    def _oauth_error(status: int, error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)

    def _client(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        header = request.headers.get("Authorization", "")
        if not header:
            return None, None
        scheme, _, value = header.partition(" ")
        try:
            client_id, _, secret = base64.b64decode(value).decode().partition(":")
        except ValueError:
            client_id, secret = "", ""
        if scheme.lower() != "basic" or self.clients.get(client_id) != secret:
            return None, self._oauth_error(401, "invalid_client", "The OAuth client was not found.")
        return client_id, None

    async def _exchange(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return self._oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
        if form.get("requested_token_type") != ACCESS_TOKEN:
            return self._oauth_error(400, "invalid_request", "Invalid requested_token_type.")
        if CLOUD_PLATFORM not in form.get("scope", "").split():
            return self._oauth_error(400, "invalid_scope", "Invalid scope.")
        client_id, refused = self._client(request)
        if refused is not None:
            return refused
        audience, kind = form.get("audience", ""), form.get("subject_token_type", "")
        region: str | None = None
        if kind == AWS_SUBJECT:
            region, problem = self._check_aws(form.get("subject_token", ""), audience)
            if problem:
                return self._oauth_error(400, "invalid_grant", problem)
        elif form.get("subject_token") not in self.subject_tokens:
            return self._oauth_error(400, "invalid_grant", "The subject token is invalid.")
        options = json.loads(form.get("options") or "{}")
        user_project = options.get("userProject")
        workforce = bool(_WORKFORCE.fullmatch(audience))
        if workforce and not (user_project or client_id):
            return self._oauth_error(
                400,
                "invalid_request",
                "A workforce pool user project or client authentication is required.",
            )
        self.exchanges.append(Exchange(audience, kind, user_project, client_id, region))
        grant = "workforce-exchange" if workforce else "token-exchange"
        body = self.oauth.issue(audience, grant, (CLOUD_PLATFORM,))
        body["issued_token_type"] = ACCESS_TOKEN
        return web.json_response(body)

    def _check_aws(self, token: str, audience: str) -> tuple[str | None, str | None]:
        """Verify a serialized signed GetCallerIdentity request the way AWS STS would."""
        try:
            signed = json.loads(unquote(token))
            headers = {h["key"].lower(): h["value"] for h in signed["headers"]}
            url, method = signed["url"], signed["method"]
        except (ValueError, KeyError, TypeError):
            return None, "The AWS subject token is not a serialized signed request."
        if headers.get("x-goog-cloud-target-resource") != audience:
            return None, "The AWS request is not bound to this provider."
        parts = urlsplit(url)
        if method != "POST" or parse_qsl(parts.query) != [
            ("Action", "GetCallerIdentity"),
            ("Version", "2011-06-15"),
        ]:
            return None, "The AWS request is not GetCallerIdentity."
        m = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/sts/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            headers.get("authorization", ""),
        )
        if m is None:
            return None, "The AWS request has no SigV4 Authorization header."
        key_id, date, region, names, signature = m.groups()
        secret = self.aws_keys.get(key_id)
        if secret is None or parts.hostname != f"sts.{region}.amazonaws.com":
            return None, "AWS: the security token included in the request is invalid."
        if "x-goog-cloud-target-resource" not in names.split(";"):
            return None, "The provider header is not signed."
        canonical_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names.split(";"))
        query = "&".join(sorted(f"{quote(k)}={quote(v)}" for k, v in parse_qsl(parts.query)))
        canonical = "\n".join(
            ["POST", parts.path or "/", query, canonical_headers, names, _sha(b"")]
        )
        stamp = headers["x-amz-date"]
        scope = f"{date}/{region}/sts/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{_sha(canonical.encode())}"
        key = f"AWS4{secret}".encode()
        for part in (date, region, "sts", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return None, "AWS: the request signature we calculated does not match."
        return region, None

    async def _workforce_refresh(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        client_id, refused = self._client(request)
        if refused is not None:
            return refused
        user = self._workforce.get(client_id or "")
        if user is None:
            return self._oauth_error(401, "invalid_client", "Client authentication is required.")
        if form.get("grant_type") != "refresh_token":
            return self._oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
        if form.get("refresh_token") != user.refresh_token:
            return self._oauth_error(400, "invalid_grant", "The refresh token is invalid.")
        body = self.oauth.issue(workforce_audience(), "workforce-refresh", (CLOUD_PLATFORM,))
        if self.rotate_refresh_tokens:
            user.refresh_token = "ya29.refresh-" + secrets.token_urlsafe(32)
            body["refresh_token"] = user.refresh_token
        return web.json_response(body)

    async def _impersonate(self, request: web.Request) -> web.Response:
        target = request.match_info["target"]
        email, _, verb = target.partition(":")
        if verb != "generateAccessToken":
            return rpc_error("NOT_FOUND", f"Method {verb} not found.")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        issued = self.oauth.issued_token(token)
        if scheme.lower() != "bearer" or issued is None or not self.oauth.valid_token(token):
            return rpc_error("UNAUTHENTICATED", "Request had invalid authentication credentials.")
        resource = f"projects/-/serviceAccounts/{email}"
        if issued.subject not in self.impersonators.get(email, set()):
            return rpc_error(
                "PERMISSION_DENIED",
                f"Permission '{GET_ACCESS_TOKEN}' denied on resource (or it may not exist).",
                details=[
                    error_info(
                        "IAM_PERMISSION_DENIED",
                        {"permission": GET_ACCESS_TOKEN, "resource": resource},
                        domain="iam.googleapis.com",
                    )
                ],
            )
        body = await request.json()
        scopes, lifetime = body.get("scope") or [], str(body.get("lifetime") or "3600s")
        seconds = int(lifetime.removesuffix("s")) if re.fullmatch(r"\d+s", lifetime) else -1
        if not scopes or not 0 < seconds <= 3600:
            return rpc_error("INVALID_ARGUMENT", "Request contains an invalid argument.")
        self.impersonations.append({"email": email, "by": issued.subject, **body})
        minted = self.oauth.issue(email, "impersonation", tuple(scopes))
        expires = dt.datetime.fromtimestamp(time.time() + seconds, dt.timezone.utc)
        return web.json_response(
            {"accessToken": minted["access_token"], "expireTime": expires.strftime("%FT%TZ")}
        )

    # ---------------------------------------------------------------------------- IMDS
    async def _imds_session(self, request: web.Request) -> web.Response:
        self.imds_requests.append("PUT token")
        if "X-aws-ec2-metadata-token-ttl-seconds" not in request.headers:
            return web.Response(status=400, text="Missing TTL header")
        session = secrets.token_urlsafe(32)
        self._imds_sessions.add(session)
        return web.Response(text=session)

    def _imds_refused(self, request: web.Request, what: str) -> web.Response | None:
        self.imds_requests.append(what)
        if request.headers.get("X-aws-ec2-metadata-token") not in self._imds_sessions:
            return web.Response(status=401, text="Unauthorized")  # IMDSv2 is enforced
        return None

    async def _imds_zone(self, request: web.Request) -> web.Response:
        return self._imds_refused(request, "zone") or web.Response(text=self.aws_region_zone)

    async def _imds_role(self, request: web.Request) -> web.Response:
        return self._imds_refused(request, "role") or web.Response(text=self._role)

    async def _imds_keys(self, request: web.Request) -> web.Response:
        refused = self._imds_refused(request, "keys")
        if refused is not None:
            return refused
        if request.match_info["role"] != self._role:
            return web.Response(status=404, text="Not Found")
        key_id = "ASIA" + secrets.token_hex(8).upper()
        secret = secrets.token_urlsafe(30)
        self.aws_keys[key_id] = secret
        expires = dt.datetime.fromtimestamp(time.time() + 3600, dt.timezone.utc)
        return web.json_response(
            {
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": key_id,
                "SecretAccessKey": secret,
                "Token": "IQoJb3JpZ2lu" + secrets.token_urlsafe(40),
                "Expiration": expires.strftime("%FT%TZ"),
            }
        )

    async def _subject(self, request: web.Request) -> web.Response:
        self.url_requests += 1
        name, value = self.subject_url_header
        if request.headers.get(name) != value:
            return web.Response(status=400, text="missing header")
        return web.Response(text=self.subject_url_body)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
