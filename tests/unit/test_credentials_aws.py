"""SigV4 signing of the AWS subject token, checked against AWS's published examples."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import unquote

import pytest

from caliban.adapters.cloud.credentials_aws import AwsKeys, sign, subject_token

# The example identity of AWS's Signature Version 4 test suite and documentation.
KEYS = AwsKeys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
WHEN = dt.datetime(2015, 8, 30, 12, 36, tzinfo=dt.timezone.utc)


def test_get_vanilla_of_the_aws_test_suite() -> None:
    headers = sign(
        "GET",
        "https://example.amazonaws.com/",
        KEYS,
        region="us-east-1",
        service="service",
        now=WHEN,
    )
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )
    assert headers["x-amz-date"] == "20150830T123600Z"
    assert headers["host"] == "example.amazonaws.com"


def test_the_iam_list_users_example_with_a_query_and_a_content_type() -> None:
    headers = sign(
        "GET",
        "https://iam.amazonaws.com/?Version=2010-05-08&Action=ListUsers",  # sorted when signed
        KEYS,
        region="us-east-1",
        service="iam",
        now=WHEN,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )


def test_a_session_token_is_signed_and_changes_the_signature() -> None:
    args = (
        "POST",
        "https://sts.us-east-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
    )
    plain = sign(*args, KEYS, region="us-east-1", service="sts", now=WHEN)
    temporary = AwsKeys(KEYS.access_key_id, KEYS.secret_access_key, "session-token")
    signed = sign(*args, temporary, region="us-east-1", service="sts", now=WHEN)
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in signed["Authorization"]
    assert signed["x-amz-security-token"] == "session-token"
    assert signed["Authorization"] != plain["Authorization"]
    assert "wJalr" not in repr(temporary)


@pytest.mark.parametrize("region_var", ["AWS_REGION", "AWS_DEFAULT_REGION"])
async def test_the_subject_token_from_environment_keys_needs_no_metadata_service(
    region_var: str,
) -> None:
    audience = (
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/a"
    )
    environ = {
        region_var: "eu-west-1",
        "AWS_ACCESS_KEY_ID": KEYS.access_key_id,
        "AWS_SECRET_ACCESS_KEY": KEYS.secret_access_key,
    }
    source = {
        "environment_id": "aws1",
        "regional_cred_verification_url": (
            "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
        ),
        # Unreachable: with keys and region in the environment it must not be asked.
        "imdsv2_session_token_url": "http://127.0.0.1:9/latest/api/token",
    }
    token = await subject_token(None, source, audience=audience, environ=environ, now=WHEN)  # type: ignore[arg-type]
    request = json.loads(unquote(token))
    assert request["method"] == "POST"
    assert request["url"] == (
        "https://sts.eu-west-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
    )
    headers = {h["key"]: h["value"] for h in request["headers"]}
    assert headers["x-goog-cloud-target-resource"] == audience
    assert headers["host"] == "sts.eu-west-1.amazonaws.com"
    assert headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-1/sts/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-goog-cloud-target-resource, Signature="
    )
    expected = sign(
        "POST",
        request["url"],
        KEYS,
        region="eu-west-1",
        service="sts",
        now=WHEN,
        headers={"x-goog-cloud-target-resource": audience},
    )
    assert headers["Authorization"] == expected["Authorization"]
