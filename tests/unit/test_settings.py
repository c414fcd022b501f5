"""The precedence of settings: flag > environment > project file > user file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from caliban.core import config as cc
from caliban.core import settings
from caliban.core.userconfig import UserConfig
from caliban.errors import ValidationError

PROJECT_PATH = "/p/.calibanconfig.json"
USER = UserConfig(
    {
        "gcloud.project_id": "user-proj",
        "gcloud.region": "europe-west4",
        "base_image.cpu": "user/cpu",
        "base_image.gpu": "user/gpu",
        "default_mode": "cpu",
        "labels": {"team": "user"},
        "kubeconfig": "/home/u/kube.yaml",
    },
    "/u/config.json",
)
PROJECT = settings.project_values(
    cc.from_mapping({"gcloud": {"project_id": "proj-proj"}, "base_image": {"gpu": "proj/gpu"}})
)

# (setting, flags, environ, expected value, expected source, expected where)
CASES = [
    (
        "gcloud.project_id",
        {"gcloud.project_id": "flag-proj"},
        {"PROJECT_ID": "env-proj"},
        "flag-proj",
        "flag",
        "--project_id",
    ),
    ("gcloud.project_id", {}, {"PROJECT_ID": "env-proj"}, "env-proj", "env", "PROJECT_ID"),
    ("gcloud.project_id", {}, {}, "proj-proj", "project file", PROJECT_PATH),
    # An empty flag or variable is "not given", as an unset shell variable would be.
    (
        "gcloud.project_id",
        {"gcloud.project_id": ""},
        {"PROJECT_ID": "  "},
        "proj-proj",
        "project file",
        PROJECT_PATH,
    ),
    ("gcloud.region", {}, {}, "europe-west4", "user file", "/u/config.json"),
    ("gcloud.region", {}, {"REGION": "asia-east1"}, "asia-east1", "env", "REGION"),
    ("base_image.gpu", {}, {}, "proj/gpu", "project file", PROJECT_PATH),
    ("base_image.cpu", {}, {}, "user/cpu", "user file", "/u/config.json"),
    (
        "base_image.cpu",
        {},
        {"CALIBAN_BASE_IMAGE": "env/{}:1"},
        "env/cpu:1",
        "env",
        "CALIBAN_BASE_IMAGE",
    ),
    (
        "base_image.gpu",
        {},
        {"CALIBAN_BASE_IMAGE": "env/{}:1"},
        "env/gpu:1",
        "env",
        "CALIBAN_BASE_IMAGE",
    ),
    ("default_mode", {}, {}, "cpu", "user file", "/u/config.json"),
    ("default_mode", {"default_mode": "cpu"}, {}, "cpu", "flag", "--nogpu"),
    (
        "labels",
        {},
        {"CALIBAN_LABELS": "a=1, b = two"},
        {"a": "1", "b": "two"},
        "env",
        "CALIBAN_LABELS",
    ),
    ("labels", {}, {}, {"team": "user"}, "user file", "/u/config.json"),
    ("kubeconfig", {"kubeconfig": "/f"}, {"KUBECONFIG": "/e"}, "/f", "flag", "--kubeconfig"),
    ("kubeconfig", {}, {"KUBECONFIG": "/e"}, "/e", "env", "KUBECONFIG"),
    ("kubeconfig", {}, {}, "/home/u/kube.yaml", "user file", "/u/config.json"),
    (
        "image_registry",
        {},
        {"CALIBAN_IMAGE_REGISTRY": "r.example/ml"},
        "r.example/ml",
        "env",
        "CALIBAN_IMAGE_REGISTRY",
    ),
]


@pytest.mark.parametrize(("name", "flags", "environ", "value", "source", "where"), CASES)
def test_precedence(
    name: str,
    flags: dict[str, object],
    environ: dict[str, str],
    value: object,
    source: str,
    where: str | None,
) -> None:
    got = settings.resolve(
        flags=flags,
        environ=environ,
        project=PROJECT,
        project_path=PROJECT_PATH,
        user=USER,
        names=[name],
    )[name]
    assert (got.value, got.source, got.where) == (value, source, where)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("base_image.cpu", "python:3.11-slim"),
        ("default_mode", "gpu"),
        ("gcloud.region", "us-central1"),
        ("caliban_home", "~/.caliban"),
        ("kubeconfig", "~/.kube/config"),
        ("labels", {}),
        ("gcloud.project_id", None),
        ("image_registry", None),
    ],
)
def test_defaults_with_nothing_set(name: str, value: object) -> None:
    got = settings.resolve(environ={}, names=[name])[name]
    assert (got.value, got.source, got.where) == (value, "default", None)


def test_every_setting_is_resolved_in_table_order() -> None:
    got = settings.resolve(environ={}, user=USER)
    assert list(got) == [s.name for s in settings.SETTINGS]


def test_user_file_only_settings_ignore_the_project_mapping() -> None:
    # gcloud.region is not a project-file key: a stray value there must not win.
    got = settings.resolve(
        environ={}, project={"gcloud.region": "x"}, user=USER, names=["gcloud.region"]
    )
    assert got["gcloud.region"].source == "user file"


def test_bad_labels_variable_is_one_line() -> None:
    with pytest.raises(ValidationError, match=r"CALIBAN_LABELS: 'novalue' is not key=value"):
        settings.resolve(environ={"CALIBAN_LABELS": "novalue"}, names=["labels"])


def test_project_values_leave_out_what_is_unset() -> None:
    assert settings.project_values(cc.CalibanConfig()) == {}
    assert settings.project_path_for(str(Path("/p"))) == PROJECT_PATH
