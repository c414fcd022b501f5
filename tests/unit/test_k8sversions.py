"""Which server versions caliban's Jobs need (caliban.platforms.kubernetes.versions, pure)."""

from __future__ import annotations

from typing import Any

import pytest

from caliban.errors import ValidationError
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes.spec import JobShape
from caliban.platforms.kubernetes.versions import (
    NEWEST,
    OLDEST,
    OLDEST_INDEXED,
    ServerVersion,
    check_server,
    features_of,
    parse_version,
)

JOB_ID = "01hzzzzzzzzzzzzzzzzzzzzzzz"


def plain() -> dict[str, Any]:
    return k8sspec.job_manifest(
        JobShape(image="img"), name="p-" + JOB_ID, job_id=JOB_ID, args=["--a"], labels={}
    )


def indexed() -> dict[str, Any]:
    return k8sspec.indexed_manifest(
        plain(),
        name="p-" + JOB_ID,
        first_job_id=JOB_ID,
        completions=3,
        parallelism=None,
        entry_command=["python", "job.py"],
    )


def v(minor: int) -> ServerVersion:
    return ServerVersion(1, minor, f"v1.{minor}.3")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"major": "1", "minor": "31", "gitVersion": "v1.31.4"}, (1, 31)),
        # GKE and EKS report a "+" after the minor
        ({"major": "1", "minor": "30+", "gitVersion": "v1.30.5-gke.1014001"}, (1, 30)),
        ({"major": "", "minor": "", "gitVersion": "v1.29.0-k3s1"}, (1, 29)),
    ],
)
def test_parse_version(body: dict[str, str], expected: tuple[int, int]) -> None:
    parsed = parse_version(body)
    assert (parsed.major, parsed.minor) == expected
    assert str(parsed) == body["gitVersion"]


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes version"):
        parse_version({"gitVersion": "unknown"})


def test_features_of_each_kind_of_job() -> None:
    assert [f.name for f in features_of([plain()])] == [
        "podFailurePolicy",
        "the DisruptionTarget pod condition",
    ]
    names = [f.name for f in features_of([indexed()])]
    assert "backoffLimitPerIndex" in names
    assert "the batch.kubernetes.io/job-completion-index pod label" in names
    assert features_of([{"kind": "ConfigMap", "data": {}}]) == []


def test_jobs_per_experiment_run_from_1_26_with_a_warning_below_the_tested_range() -> None:
    assert check_server(v(OLDEST), [plain()], where="c") is None
    assert check_server(v(NEWEST), [plain()], where="c") is None
    warning = check_server(v(26), [plain()], where="ctx")
    assert (
        warning == f"ctx runs Kubernetes v1.26.3; caliban is tested with 1.{OLDEST} to 1.{NEWEST}"
    )
    assert check_server(v(NEWEST + 1), [plain()], where="c") is not None
    with pytest.raises(ValidationError) as err:
        check_server(v(25), [plain()], where="ctx")
    assert err.value.message == (
        "ctx runs Kubernetes v1.25.3; these Jobs need 1.26 or newer (podFailurePolicy)"
    )
    assert err.value.hint == "upgrade the cluster"


def test_indexed_needs_1_29_and_says_what_to_do_instead() -> None:
    assert check_server(v(OLDEST_INDEXED), [indexed()], where="c") is None
    with pytest.raises(ValidationError) as err:
        check_server(v(OLDEST_INDEXED - 1), [indexed()], where="ctx")
    assert "\n" not in err.value.message
    assert err.value.message == (
        "ctx runs Kubernetes v1.28.3; an Indexed Job needs 1.29 or newer (backoffLimitPerIndex)"
    )
    assert err.value.hint is not None and "without --indexed" in err.value.hint
    # Too old even for plain Jobs: the advice is not to drop --indexed.
    with pytest.raises(ValidationError, match=r"these Jobs need 1\.29") as err:
        check_server(v(25), [indexed()], where="ctx")
    assert err.value.hint == "upgrade the cluster"


def test_another_major_version_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"only knows 1\.x"):
        check_server(ServerVersion(2, 0), [plain()], where="c")
