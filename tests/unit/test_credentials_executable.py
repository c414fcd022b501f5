"""The JSON answer of a pluggable-auth command, as Google documents it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from caliban.adapters.cloud.credentials_executable import _parse, check_allowed, check_shape
from caliban.errors import AuthError, ConfigError

JWT = "urn:ietf:params:oauth:token-type:jwt"
SAML = "urn:ietf:params:oauth:token-type:saml2"


def answer(**change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 1,
        "success": True,
        "token_type": JWT,
        "id_token": "header.payload.signature",
        "expiration_time": int(time.time()) + 3600,
    }
    base.update(change)
    return {k: v for k, v in base.items() if v is not None}


def test_id_tokens_and_saml_assertions() -> None:
    assert _parse(answer(), needs_expiry=True, what="a")[0] == "header.payload.signature"
    saml = answer(token_type=SAML, id_token=None, saml_response="PHNhbWw+")
    assert _parse(saml, needs_expiry=False, what="a")[0] == "PHNhbWw+"
    # Without an output file the expiry may be left out.
    assert _parse(answer(expiration_time=None), needs_expiry=False, what="a")[1] is None


@pytest.mark.parametrize(
    ("response", "needs_expiry", "message"),
    [
        (answer(version=None), False, "missing or unsupported version"),
        (answer(version=2), False, "unsupported version"),
        (answer(success=None), False, "lacks the success field"),
        (
            {"version": 1, "success": False, "code": "401", "message": "log in first"},
            False,
            "reports a failure: code 401: log in first",
        ),
        (answer(token_type="urn:x"), False, "unknown token_type"),
        (answer(id_token=None), False, "lacks its id_token"),
        (answer(expiration_time=None), True, "lacks expiration_time"),
        (answer(expiration_time=int(time.time()) - 1), False, "expired"),
        (["not", "an", "object"], False, "not a JSON object"),
    ],
)
def test_unusable_answers(response: object, needs_expiry: bool, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        _parse(response, needs_expiry=needs_expiry, what="the answer")


def test_the_command_must_be_allowed_and_well_formed() -> None:
    check_shape({"command": "/bin/get-token --x", "timeout_millis": 120_000}, "f")
    with pytest.raises(ConfigError, match="No closing quotation"):
        check_shape({"command": "get-token 'oops"}, "f")
    with pytest.raises(ConfigError, match="timeout_millis"):
        check_shape({"command": "x", "timeout_millis": 4999}, "f")
    check_allowed("f", {"GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES": "1"})
    with pytest.raises(ConfigError, match="ALLOW_EXECUTABLES=1"):
        check_allowed("f", {"GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES": "true"})
