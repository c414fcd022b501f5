"""The generated Dockerfile and how a project's entry point is resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from caliban.core.baseimage import DEFAULTS, resolve
from caliban.core.dockerfile import BuildSpec, ImageUser, Jupyter, render
from caliban.core.project import inspect, resolve_entrypoint
from caliban.errors import ValidationError
from caliban.spec import EntryKind, Entrypoint, JobMode

ALICE = ImageUser(1000, 1000, "alice")
ROOT = ImageUser(0, 0, "root")


def _spec(**kw: object) -> BuildSpec:
    base: dict[str, object] = {"base_image": "python:3.11-slim", "user": ALICE, "mode": JobMode.CPU}
    base.update(kw)
    return BuildSpec(**base)  # type: ignore[arg-type]


def test_layers_go_from_stable_to_volatile() -> None:
    text = render(
        _spec(
            apt_packages=("git", "curl"),
            requirements=True,
            setup_py=True,
            extras=("cpu", "dev"),
            extra_dirs=("data",),
            entry=Entrypoint(EntryKind.MODULE, "trainer.train", "trainer"),
        )
    )
    order = [
        text.index(s)
        for s in (
            "FROM python:3.11-slim",
            "apt-get install --yes --no-install-recommends curl git",
            "useradd",
            'COPY ["setup.py"',
            "pip install '.[cpu,dev]'",
            'COPY ["requirements.txt"',
            'COPY --chown=1000:1000 ["data", "/usr/app/data"]',
            'COPY --chown=1000:1000 ["trainer", "/usr/app/trainer"]',
            "USER 1000:1000",
            'ENTRYPOINT ["python3", "-m", "trainer.train"]',
        )
    ]
    assert order == sorted(order)
    assert 'ENV HOME="/home/alice"' in text


def test_root_host_user_needs_no_useradd() -> None:
    text = render(_spec(user=ROOT, entry=Entrypoint(EntryKind.SCRIPT, "train.py", ".")))
    assert "useradd" not in text and "USER 0" not in text
    assert 'COPY [".", "/usr/app"]' in text and 'ENV HOME="/root"' in text
    assert 'ENTRYPOINT ["python3", "train.py"]' in text


def test_no_credentials_and_no_entrypoint_for_shells() -> None:
    text = render(_spec(jupyter=Jupyter(lab=True, version="4.2.0")))
    assert "ENTRYPOINT" not in text and "COPY --chown" not in text
    assert "pip install jupyterlab==4.2.0" in text
    for secret in ("credentials", ".creds", "GOOGLE_APPLICATION_CREDENTIALS", "adc"):
        assert secret not in text
    assert "pip install notebook\n" in render(_spec(jupyter=Jupyter()))


def test_shell_commands_in_other_files_run_with_bash() -> None:
    spec = _spec(entry=Entrypoint(EntryKind.FILE, "scripts/go.sh", "scripts"))
    assert 'ENTRYPOINT ["/bin/bash", "scripts/go.sh"]' in render(spec)
    assert spec.context_paths() == ["scripts"]


def test_entrypoint_resolution(tmp_path: Path) -> None:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "train.py").write_text("")
    (tmp_path / "run.sh").write_text("")
    (tmp_path / "top.py").write_text("")
    assert resolve_entrypoint("trainer.train", tmp_path) == Entrypoint(
        EntryKind.MODULE, "trainer.train", "trainer"
    )
    assert resolve_entrypoint("trainer/train.py", tmp_path) == Entrypoint(
        EntryKind.SCRIPT, "trainer/train.py", "trainer"
    )
    assert resolve_entrypoint("top.py", tmp_path).package_path == "."
    assert resolve_entrypoint("run.sh", tmp_path).kind is EntryKind.FILE
    for bad in ("missing.py", "trainer.nope", "../escape.py", "/etc/passwd", " "):
        with pytest.raises(ValidationError):
            resolve_entrypoint(bad, tmp_path)


def test_project_inspection(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / "data").mkdir()
    facts = inspect(tmp_path, ("data",))
    assert facts.requirements and not facts.setup_py
    with pytest.raises(ValidationError, match="nodir"):
        inspect(tmp_path, ("nodir",))
    with pytest.raises(ValidationError, match="inside the project"):
        inspect(tmp_path, ("../data",))


def test_base_image_precedence() -> None:
    assert resolve(JobMode.CPU, None, {}) == DEFAULTS[JobMode.CPU]
    assert resolve(JobMode.GPU, None, {}) == DEFAULTS[JobMode.GPU]
    assert resolve(JobMode.CPU, "mine:{}", {}) == "mine:cpu"
    assert resolve(JobMode.GPU, "mine:{}", {"CALIBAN_BASE_IMAGE": "env:{}"}) == "env:gpu"
    assert resolve(JobMode.CPU, "mine:1", {"CALIBAN_BASE_IMAGE": " "}) == "mine:1"
