"""The Cloud Logging query and entry text for Vertex jobs (caliban/platforms/vertex/cloudlog.py)."""

from __future__ import annotations

import pytest

from caliban.platforms.vertex import cloudlog


def test_one_job_many_jobs_and_a_start_time() -> None:
    assert cloudlog.job_filter(["42"]) == 'resource.type="ml_job" AND resource.labels.job_id="42"'
    assert cloudlog.job_filter(["9", "42", "9"], since="2026-01-01T00:00:00.5Z") == (
        'resource.type="ml_job" AND resource.labels.job_id=("42" OR "9")'
        ' AND timestamp>="2026-01-01T00:00:00.5Z"'
    )
    with pytest.raises(ValueError):
        cloudlog.job_filter([])


def test_entry_text_from_text_or_json_payloads() -> None:
    assert cloudlog.entry_text({"textPayload": "epoch 1"}) == "epoch 1"
    assert cloudlog.entry_text({"jsonPayload": {"message": "hi", "levelname": "INFO"}}) == "hi"
    assert cloudlog.entry_text({"jsonPayload": {"b": 1, "a": 2}}) == '{"a": 2, "b": 1}'
    assert cloudlog.entry_text({}) == ""
