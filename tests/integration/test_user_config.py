"""The user-level config file as a user meets it: ``caliban config`` shows each value
and its source, a bad file stops every command with one line, and the file's
base_image/default_mode really decide what ``caliban build`` builds."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import MakeProject, docker_cli, run_cli

# Variables of the developer's shell that would change what is resolved.
_SETTING_VARS = (
    "CALIBAN_BASE_IMAGE",
    "CALIBAN_IMAGE_REGISTRY",
    "CALIBAN_LABELS",
    "CALIBAN_CONFIG",
    "PROJECT_ID",
    "REGION",
    "GOOGLE_CLOUD_QUOTA_PROJECT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "KUBECONFIG",
)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_VARS}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        CALIBAN_HOME=str(tmp_path / "caliban-home"),
        **extra,
    )
    return env


def _write_user_file(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "xdg" / "caliban" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _project(tmp_path: Path, data: object) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    (folder / ".calibanconfig.json").write_text(json.dumps(data))
    return folder


def test_config_shows_each_value_and_its_source(tmp_path: Path) -> None:
    user_file = _write_user_file(
        tmp_path,
        {
            "base_image": "me/base:{}",
            "default_mode": "gpu",
            "image_registry": "registry.example/ml",
            "gcloud": {"project_id": "user-proj", "region": "europe-west4", "cloud_key": "sa.json"},
        },
    )
    folder = _project(tmp_path, {"default_mode": "cpu", "gcloud": {"project_id": "proj-proj"}})
    env = _clean_env(tmp_path, PROJECT_ID="env-proj")
    project_file = f"{folder}/.calibanconfig.json"

    done = run_cli(["config", "--json"], cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["user_file"] == {"path": str(user_file), "exists": True}
    assert out["project_file"] == {"path": project_file, "exists": True}
    got = {k: (v["value"], v["source"], v["where"]) for k, v in out["settings"].items()}
    assert got["gcloud.project_id"] == ("env-proj", "env", "PROJECT_ID")
    assert got["default_mode"] == ("cpu", "project file", project_file)
    assert got["base_image.gpu"] == ("me/base:gpu", "user file", str(user_file))
    assert got["gcloud.region"] == ("europe-west4", "user file", str(user_file))
    assert got["image_registry"] == ("registry.example/ml", "user file", str(user_file))
    # A key file is shown as its path (anchored at the user file), never read.
    assert got["gcloud.cloud_key"] == (
        str(user_file.parent / "sa.json"),
        "user file",
        str(user_file),
    )
    assert got["caliban_home"] == (env["CALIBAN_HOME"], "env", "CALIBAN_HOME")
    assert got["kube_context"] == (None, "default", None)

    flagged = run_cli(["config", "--json", "--region", "us-east1", "--nogpu"], cwd=folder, env=env)
    settings = json.loads(flagged.stdout)["settings"]
    assert (settings["gcloud.region"]["source"], settings["gcloud.region"]["where"]) == (
        "flag",
        "--region",
    )
    assert settings["default_mode"]["where"] == "--nogpu"

    text = run_cli(["config"], cwd=folder, env=env)
    assert text.returncode == 0, text.stderr
    lines = {line.split()[0]: line for line in text.stdout.splitlines() if line.strip()}
    assert lines["user"].endswith(str(user_file))
    assert lines["gcloud.project_id"].split()[1:] == ["env-proj", "env", "PROJECT_ID"]
    assert lines["default_mode"].split()[1:] == ["cpu", "project", "file", project_file]
    assert lines["gcloud.region"].split()[1:] == ["europe-west4", "user", "file", str(user_file)]
    assert lines["base_image.cpu"].split()[1:] == ["me/base:cpu", "user", "file", str(user_file)]


def test_config_without_any_file_says_so_and_shows_defaults(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    done = run_cli(["config"], cwd=folder, env=_clean_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "(not found)" in done.stdout.splitlines()[0]
    assert "(not found)" in done.stdout.splitlines()[1]
    region = next(line for line in done.stdout.splitlines() if line.startswith("gcloud.region"))
    assert region.split()[1:] == ["us-central1", "default"]


def test_bad_user_file_stops_a_run_with_one_line_and_records_nothing(tmp_path: Path) -> None:
    user_file = _write_user_file(tmp_path, {"gcloud": {"regoin": "us-east1"}})
    folder = _project(tmp_path, {"default_mode": "cpu"})
    env = _clean_env(tmp_path)
    for args in (["config"], ["run", "--dry_run", "train.py"], ["build", "train.py"]):
        done = run_cli(args, cwd=folder, env=env)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert str(user_file) in lines[0]
        assert "unknown key 'regoin' in 'gcloud'; did you mean 'region'?" in lines[0]
    assert not Path(env["CALIBAN_HOME"]).exists()

    _write_user_file(tmp_path, {"default_mode": ["cpu"]})
    done = run_cli(["run", "--dry_run", "train.py"], cwd=folder, env=env)
    assert done.returncode == 2
    assert "key 'default_mode' must be a string, not a list" in done.stderr
    assert not Path(env["CALIBAN_HOME"]).exists()


def test_user_file_base_image_and_default_mode_decide_the_build(
    tmp_path: Path, env: dict[str, str], base_image: str, make_project: MakeProject
) -> None:
    # No CALIBAN_BASE_IMAGE and no default_mode in the project: only the user file
    # says CPU, and only its base_image.cpu exists. Were default_mode ignored, the
    # GPU image (which does not exist) would be pulled and the build would fail.
    env = {k: v for k, v in env.items() if k != "CALIBAN_BASE_IMAGE"}
    env["CALIBAN_CONFIG"] = str(tmp_path / "user-config.json")
    Path(env["CALIBAN_CONFIG"]).write_text(
        json.dumps(
            {
                "default_mode": "cpu",
                "base_image": {"cpu": base_image, "gpu": "caliban-test-no-such-image:gpu"},
            }
        )
    )
    folder = make_project(cpu=False)
    shown = run_cli(["config", "--json"], cwd=folder, env=env)
    assert json.loads(shown.stdout)["settings"]["default_mode"]["source"] == "user file"

    done = run_cli(["build", "job.py"], cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    tag = done.stdout.strip().splitlines()[-1]
    layers = json.loads(docker_cli("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag))
    base_layers = json.loads(
        docker_cli("image", "inspect", "--format", "{{json .RootFS.Layers}}", base_image)
    )
    assert layers[: len(base_layers)] == base_layers
