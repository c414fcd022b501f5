"""The executable source of workload identity federation ("pluggable auth").

The credentials file names a command that prints an OIDC ID token or a SAML
assertion as JSON::

    {"version": 1, "success": true, "token_type": "urn:ietf:params:oauth:token-type:jwt",
     "id_token": "...", "expiration_time": 1700000000}

or ``{"version": 1, "success": false, "code": "401", "message": "..."}``. Running
it needs ``$GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1``, as with Google's
libraries. When the file names an ``output_file``, the command is expected to
leave its answer there too, and an unexpired answer found there is used
without running the command again (caliban reads that file, never writes it).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping
from typing import Any

import anyio

from caliban.errors import AuthError, ConfigError

ALLOW = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"
DEFAULT_TIMEOUT_MS = 30_000
_TOKEN_FIELDS = {
    "urn:ietf:params:oauth:token-type:jwt": "id_token",
    "urn:ietf:params:oauth:token-type:id_token": "id_token",
    "urn:ietf:params:oauth:token-type:saml2": "saml_response",
}


def check_shape(executable: object, where: str) -> None:
    """ConfigError unless this ``credential_source.executable`` can be run."""
    if not isinstance(executable, dict) or not str(executable.get("command") or "").strip():
        raise ConfigError(f"{where}: credential_source.executable lacks a command")
    try:
        shlex.split(str(executable["command"]))
    except ValueError as exc:
        raise ConfigError(f"{where}: credential_source.executable.command: {exc}") from None
    timeout = executable.get("timeout_millis", DEFAULT_TIMEOUT_MS)
    if not isinstance(timeout, int) or not 5_000 <= timeout <= 120_000:
        raise ConfigError(
            f"{where}: credential_source.executable.timeout_millis must be 5000 to 120000"
        )


def check_allowed(where: str, environ: Mapping[str, str]) -> None:
    """ConfigError unless the user allowed credentials files to run commands."""
    if environ.get(ALLOW) != "1":
        raise ConfigError(
            f"{where} runs a command to get its token; "
            f"set {ALLOW}=1 to allow it (only for a file you trust)"
        )


def _parse(response: object, *, needs_expiry: bool, what: str) -> tuple[str, float | None]:
    if not isinstance(response, dict):
        raise AuthError(f"{what} is not a JSON object")
    version = response.get("version")
    if not isinstance(version, int) or version > 1:
        raise AuthError(f"{what} has a missing or unsupported version ({version!r})")
    if "success" not in response:
        raise AuthError(f"{what} lacks the success field")
    if response["success"] is not True:
        raise AuthError(
            f"{what} reports a failure: code {response.get('code')}: "
            f"{str(response.get('message'))[:200]}"
        )
    field = _TOKEN_FIELDS.get(str(response.get("token_type")))
    if field is None:
        raise AuthError(f"{what} has an unknown token_type {response.get('token_type')!r}")
    token = response.get(field)
    if not isinstance(token, str) or not token:
        raise AuthError(f"{what} lacks its {field}")
    expiry = response.get("expiration_time")
    if expiry is None and needs_expiry:
        raise AuthError(f"{what} lacks expiration_time (required with an output_file)")
    if expiry is not None and (not isinstance(expiry, int | float) or expiry <= time.time()):
        raise AuthError(f"{what} is an expired token")
    return token, float(expiry) if expiry is not None else None


async def _cached(output_file: str) -> str | None:
    try:
        text = await (await anyio.Path(output_file).expanduser()).read_text(encoding="utf-8")
        token, _ = _parse(json.loads(text), needs_expiry=True, what="cached")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AuthError):
        return None  # absent, expired or unusable: run the command
    return token


async def subject_token(
    executable: Mapping[str, Any],
    *,
    audience: str,
    token_type: str,
    impersonated_email: str | None,
    environ: Mapping[str, str],
) -> str:
    output_file = executable.get("output_file")
    if output_file:
        cached = await _cached(str(output_file))
        if cached is not None:
            return cached
    command = str(executable["command"])
    env = {
        **environ,
        "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE": audience,
        "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE": token_type,
        "GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE": "0",
    }
    if impersonated_email:
        env["GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL"] = impersonated_email
    if output_file:
        env["GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE"] = str(output_file)
    timeout = int(executable.get("timeout_millis", DEFAULT_TIMEOUT_MS)) / 1000
    name = shlex.split(command)[0]
    try:
        with anyio.fail_after(timeout):
            result = await anyio.run_process(shlex.split(command), env=env, check=False)
    except TimeoutError:
        raise AuthError(f"the credentials command {name} did not finish in {timeout:g}s") from None
    except OSError as exc:
        raise AuthError(f"cannot run the credentials command {name}: {exc.strerror}") from exc
    if result.returncode != 0:
        # Its output is not shown: it may hold a token.
        raise AuthError(f"the credentials command {name} failed (exit code {result.returncode})")
    what = f"the answer of the credentials command {name}"
    try:
        response = json.loads(result.stdout.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        raise AuthError(f"{what} is not JSON") from None
    return _parse(response, needs_expiry=bool(output_file), what=what)[0]
