"""``.calibanconfig.json``: schema, per-mode values, loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from caliban.core import config as cc
from caliban.errors import EXIT_USAGE, CalibanConfigError
from caliban.spec import JobMode

CPU, GPU = JobMode.CPU, JobMode.GPU


def test_defaults() -> None:
    c = cc.from_mapping({})
    assert c == cc.CalibanConfig()
    assert c.apt_packages_for(GPU) == c.apt_packages_for(CPU) == ()
    assert c.base_image_for(CPU) is None and c.base_image_for(GPU) is None
    assert c.build_time_credentials is False
    assert c.julia_version is None and c.default_mode is None and c.mlflow_config is None
    assert c.gcloud == cc.GcloudConfig() and c.uv == cc.UvConfig(None, "mlflow")


def test_apt_packages_list_applies_to_both_modes_sorted_unique() -> None:
    c = cc.from_mapping({"apt_packages": ["wget", "curl", "wget"]})
    assert c.apt_packages_for(CPU) == c.apt_packages_for(GPU) == ("curl", "wget")


def test_apt_packages_per_mode() -> None:
    c = cc.from_mapping({"apt_packages": {"gpu": ["libcudnn8", "git"], "cpu": ["git"]}})
    assert c.apt_packages_for(GPU) == ("git", "libcudnn8")
    assert c.apt_packages_for(CPU) == ("git",)
    only_gpu = cc.from_mapping({"apt_packages": {"gpu": ["git"]}})
    assert only_gpu.apt_packages_for(CPU) == ()
    pinned = cc.from_mapping({"apt_packages": ["libfoo=1.2-3", "bar/bookworm-backports", "g++"]})
    assert pinned.apt_packages_for(CPU) == ("bar/bookworm-backports", "g++", "libfoo=1.2-3")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"apt_packages": "git"}, "key 'apt_packages' must be a list of package names"),
        ({"apt_packages": [1]}, "1 is not a Debian package name"),
        ({"apt_packages": ["git; rm -rf /"]}, "is not a Debian package name"),
        ({"apt_packages": {"tpu": ["git"]}}, "unknown key 'tpu' in 'apt_packages'"),
        ({"apt_packages": {"gpu": "git"}}, "key 'apt_packages.gpu' must be a list"),
    ],
)
def test_apt_packages_errors(data: object, message: str) -> None:
    with pytest.raises(CalibanConfigError, match=message):
        cc.from_mapping(data)


def test_base_image_string_with_mode_placeholder() -> None:
    c = cc.from_mapping({"base_image": "gcr.io/blueshift-playground/blueshift:{}-ubuntu"})
    assert c.base_image_for(CPU) == "gcr.io/blueshift-playground/blueshift:cpu-ubuntu"
    assert c.base_image_for(GPU) == "gcr.io/blueshift-playground/blueshift:gpu-ubuntu"


def test_base_image_per_mode_and_missing_mode() -> None:
    c = cc.from_mapping({"base_image": {"gpu": "random:latest"}})
    assert c.base_image_for(GPU) == "random:latest"
    # The original crashed here; now the caller falls back to its default.
    assert c.base_image_for(CPU) is None
    both = cc.from_mapping({"base_image": {"cpu": "a:{}", "gpu": "b:1"}})
    assert (both.base_image_for(CPU), both.base_image_for(GPU)) == ("a:cpu", "b:1")


@pytest.mark.parametrize(
    ("data", "legacy"),
    [
        (
            {"base_image": "dlvm:pytorch-{}-1.4"},
            "gcr.io/deeplearning-platform-release/pytorch-cpu.1-4",
        ),
        (
            {"base_image": {"cpu": "dlvm:tf2-{}-2.1", "gpu": "random:latest"}},
            "gcr.io/deeplearning-platform-release/tf2-cpu.2-1",
        ),
        ({"base_image": "dlvm:tf-gpu"}, "gcr.io/deeplearning-platform-release/tf-gpu"),
    ],
)
def test_dlvm_shorthands_are_refused_with_their_old_meaning(data: object, legacy: str) -> None:
    with pytest.raises(CalibanConfigError, match="no longer supported") as info:
        cc.from_mapping(data)
    assert legacy in str(info.value)
    assert "us-docker.pkg.dev/deeplearning-platform-release" in str(info.value)


def test_unknown_dlvm_shorthand_is_refused_too() -> None:
    with pytest.raises(CalibanConfigError, match="'dlvm:jax-gpu' is no longer supported"):
        cc.from_mapping({"base_image": "dlvm:jax-gpu"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"base_image": 3}, "key 'base_image' must be an image name"),
        ({"base_image": ""}, "key 'base_image' must not be empty"),
        ({"base_image": "a b"}, "is not an image name"),
        ({"base_image": {"cpu": 1}}, "key 'base_image.cpu' must be a string"),
    ],
)
def test_base_image_errors(data: object, message: str) -> None:
    with pytest.raises(CalibanConfigError, match=message):
        cc.from_mapping(data)


@pytest.mark.parametrize("text", ["cpu", "GPU", "  Gpu  ", "CPU\n"])
def test_default_mode_any_case(text: str) -> None:
    assert cc.from_mapping({"default_mode": text}).default_mode is JobMode.parse(text)


def test_other_keys() -> None:
    c = cc.from_mapping(
        {
            "build_time_credentials": True,
            "julia_version": " 1.9.3 ",
            "gcloud": {"project_id": "my-project", "cloud_key": "key.json"},
            "mlflow_config": {
                "project": "p",
                "region": "us-central1",
                "db": "mlflow",
                "user": "u",
                "password": "hunter2",
                "artifact_root": "gs://bucket/mlflow",
                "debug": True,
            },
            "uv": {"mlflow": {"pubsub_project": "p2"}},
        }
    )
    assert c.build_time_credentials is True
    assert c.julia_version == "1.9.3"
    assert c.gcloud == cc.GcloudConfig("my-project", "key.json")
    assert c.mlflow_config is not None and c.mlflow_config.debug is True
    assert "hunter2" not in repr(c)
    assert c.uv == cc.UvConfig("p2", "mlflow")


def test_null_means_not_set() -> None:
    assert cc.from_mapping({"base_image": None, "julia_version": None}) == cc.CalibanConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must contain a JSON object, not a list"),
        ({"apt_package": []}, "unknown key 'apt_package'; did you mean 'apt_packages'"),
        ({"base_images": "x"}, "unknown key 'base_images'"),
        ({"default_mode": "tpu"}, "key 'default_mode' must be 'cpu' or 'gpu', not 'tpu'"),
        ({"default_mode": 1}, "key 'default_mode' must be a string, not a number"),
        ({"build_time_credentials": "yes"}, "must be true or false, not a string"),
        ({"julia_version": 1.9}, "key 'julia_version' must be a string, not a number"),
        ({"gcloud": {"project_id": ""}}, "key 'gcloud.project_id' must not be empty"),
        ({"gcloud": {"project": "x"}}, "unknown key 'project' in 'gcloud'"),
        ({"gcloud": []}, "key 'gcloud' must be an object, not a list"),
        ({"mlflow_config": {"project": "p"}}, "key 'mlflow_config' lacks 'region'"),
        ({"uv": {"mlflow": {"topic": "x"}}}, "unknown key 'topic' in 'uv.mlflow'"),
    ],
)
def test_schema_errors_name_the_key(data: object, message: str) -> None:
    with pytest.raises(CalibanConfigError, match=message) as info:
        cc.from_mapping(data, source="proj/.calibanconfig.json")
    assert str(info.value).startswith("proj/.calibanconfig.json: ")
    assert "\n" not in str(info.value)
    assert info.value.exit_code == EXIT_USAGE


def test_load_from_folder(tmp_path: Path) -> None:
    assert cc.load(tmp_path) == cc.CalibanConfig()
    (tmp_path / cc.CONFIG_FILE).write_text(
        '// project settings\n{"apt_packages": ["git"], # tools\n "default_mode": "cpu"}\n'
    )
    c = cc.load(str(tmp_path))
    assert c.apt_packages_for(GPU) == ("git",) and c.default_mode is JobMode.CPU


def test_load_errors(tmp_path: Path) -> None:
    path = tmp_path / cc.CONFIG_FILE
    path.write_text('{"apt_packages": [}')
    with pytest.raises(CalibanConfigError, match=r"\.calibanconfig\.json: not valid JSON"):
        cc.load(tmp_path)
    path.write_text('{"nope": 1}')
    with pytest.raises(CalibanConfigError, match="unknown key 'nope'"):
        cc.load(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(CalibanConfigError, match="cannot read"):
        cc.load(tmp_path)


def test_undecodable_file(tmp_path: Path) -> None:
    # Runs as root too (CI), where permission bits would not stop a read.
    (tmp_path / cc.CONFIG_FILE).write_bytes(b'{"apt_packages": ["\xff\xfe"]}')
    with pytest.raises(CalibanConfigError, match=cc.CONFIG_FILE):
        cc.load(tmp_path)


def test_project_and_key_precedence() -> None:
    c = cc.from_mapping({"gcloud": {"project_id": "from-config", "cloud_key": "cfg.json"}})
    env = {"PROJECT_ID": "from-env", "GOOGLE_APPLICATION_CREDENTIALS": "env.json"}
    assert cc.resolve_project_id("from-flag", env, c) == "from-flag"
    assert cc.resolve_project_id(None, env, c) == "from-env"
    assert cc.resolve_project_id(None, {}, c) == "from-config"
    assert cc.resolve_project_id(None, {}, cc.CalibanConfig()) is None
    assert cc.resolve_cloud_key(None, env, c) == "env.json"
    assert cc.resolve_cloud_key(None, {"PROJECT_ID": ""}, c) == "cfg.json"
