"""The AWS subject token of workload identity federation.

Google's STS does not take AWS credentials themselves: it takes a signed but
unsent AWS STS ``GetCallerIdentity`` request, which Google forwards to AWS to
learn who the caller is. So the token is a SigV4 signature over that request,
made with the keys of this machine's AWS identity: ``$AWS_ACCESS_KEY_ID`` /
``$AWS_SECRET_ACCESS_KEY`` (``$AWS_SESSION_TOKEN``) when set, else the role of
the EC2 instance from its metadata service (IMDSv2 when the credentials file
names ``imdsv2_session_token_url``). The region is ``$AWS_REGION``,
``$AWS_DEFAULT_REGION`` or the instance's availability zone minus its letter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import anyio

from caliban.errors import AuthError

ALGORITHM = "AWS4-HMAC-SHA256"
_IMDS_TTL_SECONDS = "300"
_TIMEOUT = 10.0


@dataclass(frozen=True)
class AwsKeys:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"AwsKeys({self.access_key_id!r}, ...)"


def _uri_encode(text: str, *, safe: str = "") -> str:
    return quote(text, safe="-_.~" + safe)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def sign(
    method: str,
    url: str,
    keys: AwsKeys,
    *,
    region: str,
    service: str,
    now: dt.datetime,
    headers: Mapping[str, str] | None = None,
    body: str = "",
) -> dict[str, str]:
    """The headers that make ``method url`` a SigV4-signed request (``Authorization`` included).

    Every header passed, ``host``, ``x-amz-date`` and ``x-amz-security-token`` are signed.
    """
    parts = urlsplit(url)
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    signed: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
    signed["host"] = parts.netloc
    signed.setdefault("x-amz-date", stamp)
    if keys.session_token:
        signed["x-amz-security-token"] = keys.session_token
    names = sorted(signed)
    canonical_headers = "".join(f"{k}:{' '.join(signed[k].split())}\n" for k in names)
    query = "&".join(
        sorted(
            f"{_uri_encode(k)}={_uri_encode(v)}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
    )
    canonical = "\n".join(
        [
            method.upper(),
            _uri_encode(parts.path or "/", safe="/"),
            query,
            canonical_headers,
            ";".join(names),
            _sha256(body),
        ]
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, _sha256(canonical)])
    key = signing_key(keys.secret_access_key, stamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"{ALGORITHM} Credential={keys.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return {"Authorization": authorization, **signed}


def _service_of(host: str) -> str:
    # sts.us-east-1.amazonaws.com and sts-fips.us-east-1.amazonaws.com are both "sts".
    return host.split(".")[0].removesuffix("-fips")


async def _imds(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str],
    what: str,
) -> str:
    try:
        with anyio.fail_after(_TIMEOUT):
            async with session.request(method, url, headers=dict(headers)) as response:
                text = await response.text()
                status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise AuthError(
            f"cannot reach the AWS metadata service for {what} ({url}): "
            f"{exc or type(exc).__name__}",
            retryable=True,
        ) from exc
    if status != 200:
        raise AuthError(
            f"the AWS metadata service refused {what} (HTTP {status})",
            status=status,
            retryable=status >= 500,
        )
    return text


async def subject_token(
    session: aiohttp.ClientSession,
    source: Mapping[str, Any],
    *,
    audience: str,
    environ: Mapping[str, str],
    now: dt.datetime | None = None,
) -> str:
    """The URL-encoded JSON of a signed GetCallerIdentity request, as Google's STS wants it."""
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
    keys: AwsKeys | None = None
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        keys = AwsKeys(
            environ["AWS_ACCESS_KEY_ID"],
            environ["AWS_SECRET_ACCESS_KEY"],
            environ.get("AWS_SESSION_TOKEN") or None,
        )
    metadata: dict[str, str] = {}
    if (region is None or keys is None) and source.get("imdsv2_session_token_url"):
        metadata["X-aws-ec2-metadata-token"] = await _imds(
            session,
            "PUT",
            str(source["imdsv2_session_token_url"]),
            {"X-aws-ec2-metadata-token-ttl-seconds": _IMDS_TTL_SECONDS},
            "a session token",
        )
    if region is None:
        if not source.get("region_url"):
            raise AuthError("cannot tell the AWS region: set $AWS_REGION")
        zone = await _imds(session, "GET", str(source["region_url"]), metadata, "the region")
        region = zone.strip()[:-1]  # us-east-2b -> us-east-2
    if keys is None:
        if not source.get("url"):
            raise AuthError("no AWS credentials: set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY")
        base = str(source["url"]).rstrip("/")
        role = (await _imds(session, "GET", base, metadata, "the role name")).strip()
        raw = await _imds(session, "GET", f"{base}/{role}", metadata, "the role's credentials")
        try:
            found = json.loads(raw)
            keys = AwsKeys(found["AccessKeyId"], found["SecretAccessKey"], found.get("Token"))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise AuthError("the AWS metadata service answered unusable credentials") from exc
    url = str(source["regional_cred_verification_url"]).replace("{region}", region)
    headers = sign(
        "POST",
        url,
        keys,
        region=region,
        service=_service_of(urlsplit(url).hostname or ""),
        now=now or dt.datetime.now(dt.timezone.utc),
        # Signed too, so the token cannot be replayed against another pool.
        headers={"x-goog-cloud-target-resource": audience},
    )
    request = {
        "url": url,
        "method": "POST",
        "headers": [{"key": k, "value": v} for k, v in headers.items()],
    }
    return quote(json.dumps(request, separators=(",", ":"), sort_keys=True))
