"""The list filters caliban sends to Vertex quote every value (AIP-160 string literals)."""

from __future__ import annotations

from caliban.platforms.vertex import spec as vertexspec
from caliban.platforms.vertex.client import label_filter, list_filter
from caliban.spec import JobRecord, JobState, Platform
from tests.fakes.vertex_filter import _tokenize, compile_filter


def _job(job_id: str, xgroup: str, created: str = "2026-01-02T03:04:05+00:00") -> JobRecord:
    labels = {
        vertexspec.JOB_ID_LABEL: job_id,
        vertexspec.XGROUP_LABEL: xgroup,
        vertexspec.STORE_LABEL: "0a1b-2c",
    }
    return JobRecord(
        job_id=job_id,
        platform=Platform.VERTEX,
        state=JobState.SUBMITTED,
        xgroup=xgroup,
        experiment_id=1,
        index=0,
        args=(),
        kwargs={},
        image="img",
        spec={"labels": labels},
        details={"project": "p", "region": "us-central1"},
        platform_id=None,
        exit_code=None,
        message=None,
        log_path=None,
        user="ada",
        created=created,
        updated=created,
    )


def _comparisons(text: str) -> list[tuple[str, str, str]]:
    """(field, operator, value kind) for every comparison of an AND-only filter."""
    tokens = [t for t in _tokenize(text) if not (t.kind == "word" and t.text == "AND")]
    assert len(tokens) % 3 == 0, text
    out = []
    for i in range(0, len(tokens), 3):
        field, op, value = tokens[i : i + 3]
        assert field.kind == "word" and op.kind == "op", text
        out.append((field.text, op.text, value.kind))
    return out


def test_every_value_of_the_status_filter_is_a_quoted_string() -> None:
    jobs = [_job("01JABC-1", "ada-xgroup-2026"), _job("01JABC-2", "ada-xgroup-2026")]
    text = list_filter(jobs, "0a1b-2c")
    found = _comparisons(text)
    assert [f for f, _, _ in found] == [
        "labels.caliban_store",
        "labels.caliban_xgroup",
        "create_time",
    ]
    assert {kind for _, _, kind in found} == {"str"}, text


def test_the_job_id_filter_is_quoted_and_matches_only_that_job() -> None:
    text = label_filter(vertexspec.JOB_ID_LABEL, "01jabc-1")
    assert _comparisons(text) == [("labels.caliban_job", "=", "str")]
    matches = compile_filter(text)
    assert matches({"labels": {"caliban_job": "01jabc-1"}})
    assert not matches({"labels": {"caliban_job": "01jabc-10"}})
    assert not matches({"labels": {}})


def test_quotes_and_backslashes_in_a_value_are_escaped() -> None:
    text = label_filter("k", 'a"b\\c')
    assert _comparisons(text) == [("labels.k", "=", "str")]
    assert compile_filter(text)({"labels": {"k": 'a"b\\c'}})
