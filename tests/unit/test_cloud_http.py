"""google.rpc.Status errors turned into caliban's error tree, with retry hints."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from caliban.adapters.cloud.http import parse_retry_after, status_error
from caliban.errors import AuthError, BackendError, NotFound, QuotaError


def _status(code: int, status: str, message: str, details: list[object] | None = None) -> str:
    error: dict[str, object] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return json.dumps({"error": error})


def test_quota_429_with_retry_after_header_wins_over_retry_info() -> None:
    body = _status(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for 'Job submission requests'",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}],
    )
    err = status_error(429, body, {"Retry-After": "7"}, what="creating")
    assert isinstance(err, QuotaError) and err.retryable and err.retry_after == 7.0
    assert (
        err.message == "creating: Quota exceeded for 'Job submission requests' (RESOURCE_EXHAUSTED)"
    )
    only_info = status_error(429, body, {}, what="creating")
    assert only_info.retry_after == 30.0
    bare = status_error(
        429, _status(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted."), {}, what="creating"
    )
    assert isinstance(bare, QuotaError) and bare.retryable and bare.retry_after is None


def test_an_accelerator_quota_is_not_worth_retrying_soon() -> None:
    message = (
        "The following quota metrics exceed quota limits: "
        "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus"
    )
    err = status_error(429, _status(429, "RESOURCE_EXHAUSTED", message), {}, what="creating")
    assert isinstance(err, QuotaError) and not err.retryable
    assert err.hint is not None and "another region" in err.hint


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, BackendError, False),
        (401, AuthError, False),
        (403, AuthError, False),
        (404, NotFound, False),
        (409, BackendError, False),
        (500, BackendError, True),
        (502, BackendError, True),
        (503, BackendError, True),
        (504, BackendError, True),
    ],
)
def test_http_statuses(status: int, kind: type[BackendError], retryable: bool) -> None:
    err = status_error(status, _status(status, "X", "boom"), {}, what="listing")
    assert type(err) is kind and err.retryable is retryable and err.status == status
    assert err.message == "listing: boom (X)"


def test_a_body_that_is_not_a_google_error() -> None:
    err = status_error(502, "<html>Bad Gateway</html>", {}, what="creating")
    assert err.retryable and err.message == "creating: <html>Bad Gateway</html>"
    assert status_error(503, "", {}, what="x").message == "x: HTTP 503"


def test_retry_after_as_seconds_or_date() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30
    past = format_datetime(datetime.now(timezone.utc) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past) == 0.0
