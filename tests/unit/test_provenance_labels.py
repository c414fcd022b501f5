"""Cloud jobs carry the short commit of their code as a label, under the label rules."""

from __future__ import annotations

from caliban.adapters.provenance import registry_digest, short_commit
from caliban.core.labels import is_valid_label
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.vertex import spec as vertexspec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_vertex_labels_carry_the_commit_and_a_user_label_cannot_replace_it() -> None:
    labels = vertexspec.labels_for(
        job_id="01hzzzzzzzzzzzzzzzzzzzzzzz",
        store_id="s",
        xgroup="g",
        gpu=None,
        tpu=None,
        name="n",
        user_labels={"caliban_commit": "mine"},
        args=[],
        commit=short_commit({"git": {"commit": COMMIT}}),
    )
    assert labels["caliban_commit"] == COMMIT[:12]
    assert all(is_valid_label(k, v) for k, v in labels.items())
    without = vertexspec.labels_for(
        job_id="01hzzzzzzzzzzzzzzzzzzzzzzz", store_id="s", xgroup="g", gpu=None, tpu=None,
        name="n", user_labels={}, args=[],
    )  # fmt: skip
    assert "caliban_commit" not in without


def test_kubernetes_jobs_carry_the_commit_label() -> None:
    labels = k8sspec.labels_for(
        user={"caliban.dev/commit": "x"}, xgroup="g", store_id=None, job_id="j", commit="abc123"
    )
    assert labels[k8sspec.COMMIT_LABEL] == "abc123"
    assert "commit" not in str(k8sspec.labels_for(user={}, xgroup="g", store_id=None, job_id="j"))


def test_short_commit_and_registry_digest() -> None:
    assert short_commit(None) is None and short_commit({"git": None}) is None
    assert registry_digest("r/x@sha256:ab") == "sha256:ab"
    assert registry_digest("r/x:tag") is None
