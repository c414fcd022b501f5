"""The user-level settings file: where it is, and how bad content is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caliban.core import userconfig
from caliban.errors import CalibanConfigError, ConfigError

SRC = "/home/u/.config/caliban/config.json"


def test_path_follows_caliban_config_then_xdg_then_home() -> None:
    assert userconfig.path_for({"CALIBAN_CONFIG": "/x/c.json", "XDG_CONFIG_HOME": "/xdg"}) == Path(
        "/x/c.json"
    )
    assert userconfig.path_for({"XDG_CONFIG_HOME": "/xdg", "HOME": "/h"}) == Path(
        "/xdg/caliban/config.json"
    )
    # A relative XDG_CONFIG_HOME is invalid by the spec and ignored.
    assert userconfig.path_for({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.config/caliban/config.json"
    )
    assert userconfig.path_for({"HOME": "/h"}) == Path("/h/.config/caliban/config.json")


def test_valid_file_flattens_to_dotted_settings() -> None:
    cfg = userconfig.from_mapping(
        {
            "base_image": {"cpu": "me/cpu", "gpu": "me/{}:2"},
            "default_mode": "CPU",
            "image_registry": " registry.example/ml ",
            "labels": {"team": "vision"},
            "gcloud": {"project_id": "p1", "region": "europe-west4", "cloud_key": "keys/sa.json"},
            "kubeconfig": "~/k.yaml",
            "kube_context": "lab",
            "caliban_home": "/data/caliban",
        },
        SRC,
    )
    assert cfg.path == SRC
    assert cfg.values["base_image.gpu"] == "me/gpu:2"
    assert cfg.values["default_mode"] == "cpu"
    assert cfg.values["image_registry"] == "registry.example/ml"
    assert cfg.values["labels"] == {"team": "vision"}
    # Relative paths mean the same from any folder: anchored at the file.
    assert cfg.values["gcloud.cloud_key"] == "/home/u/.config/caliban/keys/sa.json"
    assert cfg.values["kubeconfig"] == str(Path("~/k.yaml").expanduser())
    assert cfg.values["kube_context"] == "lab"
    assert "gcloud.quota_project" not in cfg.values


def test_null_means_not_set() -> None:
    assert (
        userconfig.from_mapping({"image_registry": None, "gcloud": {"region": None}}, SRC).values
        == {}
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"base_imag": "x"}, f"{SRC}: unknown key 'base_imag'; did you mean 'base_image'?"),
        (
            {"gcloud": {"projectid": "p"}},
            "unknown key 'projectid' in 'gcloud'; did you mean 'project_id'?",
        ),
        ({"apt_packages": ["vim"]}, "unknown key 'apt_packages'"),
        ({"default_mode": "tpu"}, "key 'default_mode' must be 'cpu' or 'gpu', not 'tpu'"),
        ({"default_mode": 1}, "key 'default_mode' must be a string, not a number"),
        ({"image_registry": ["a"]}, "key 'image_registry' must be a string, not a list"),
        ({"gcloud": "p"}, "key 'gcloud' must be an object, not a string"),
        ({"gcloud": {"region": ""}}, "key 'gcloud.region' must not be empty"),
        ({"labels": ["a=b"]}, "key 'labels' must be an object of names to strings, not a list"),
        ({"labels": {"team": 3}}, "key 'labels.team' must be a string, not a number"),
        ({"labels": {"!!": "x"}}, "key 'labels': '!!' has no usable label name"),
        ({"base_image": "dlvm:tf2-gpu"}, "the 'dlvm:' shorthand"),
        ({"kubeconfig": True}, "key 'kubeconfig' must be a string, not a boolean"),
        ([1], "must contain a JSON object, not a list"),
    ],
)
def test_bad_content_is_one_line_naming_the_key(data: object, message: str) -> None:
    with pytest.raises(CalibanConfigError) as info:
        userconfig.from_mapping(data, SRC)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert info.value.exit_code == 2


def test_missing_default_file_means_no_settings(tmp_path: Path) -> None:
    cfg = userconfig.load({"HOME": str(tmp_path)})
    assert cfg.values == {} and cfg.path is None


def test_missing_file_named_by_caliban_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file \(named by \$CALIBAN_CONFIG\)"):
        userconfig.load({"CALIBAN_CONFIG": str(tmp_path / "nope.json")})


def test_load_reads_comments_and_reports_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "caliban" / "config.json"
    path.parent.mkdir()
    path.write_text('{\n  // mine\n  "gcloud": {"region": "us-east1"}\n}\n')
    cfg = userconfig.load({"XDG_CONFIG_HOME": str(tmp_path)})
    assert cfg.values == {"gcloud.region": "us-east1"} and cfg.path == str(path)
    path.write_text('{"gcloud": ')
    with pytest.raises(CalibanConfigError, match=str(path)):
        userconfig.load({"XDG_CONFIG_HOME": str(tmp_path)})
    path.write_text(json.dumps({"default_mod": "cpu"}))
    with pytest.raises(CalibanConfigError, match="did you mean 'default_mode'"):
        userconfig.load({"XDG_CONFIG_HOME": str(tmp_path)})


def test_session_takes_home_labels_and_quota_project_from_the_user_file(tmp_path: Path) -> None:
    from caliban.session import Session

    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "caliban_home": "history",
                "labels": {"team": "vision"},
                "gcloud": {"quota_project": "billing-proj"},
            }
        )
    )
    session = Session(environ={"CALIBAN_CONFIG": str(path)})
    assert session.home == tmp_path / "history"
    assert session.labels == {"team": "vision"}
    assert session.text_setting("gcloud.quota_project") == "billing-proj"
    assert session.text_setting("gcloud.quota_project", "flag-proj") == "flag-proj"

    env = {"CALIBAN_CONFIG": str(path), "CALIBAN_LABELS": "cost=q3", "CALIBAN_HOME": "/h"}
    overridden = Session(environ=env)
    assert overridden.labels == {"cost": "q3"}
    assert overridden.home == Path("/h")
    # Explicit arguments of a library caller beat every file.
    assert Session(home=tmp_path, environ=env, labels={}).labels == {}

    path.write_text(json.dumps({"lables": {}}))
    with pytest.raises(CalibanConfigError, match="did you mean 'labels'"):
        Session(environ={"CALIBAN_CONFIG": str(path)})
