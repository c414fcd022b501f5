"""A no-change build on the real engine: one inspect over the socket, no aiodocker, no rich."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import MakeProject, run_cli
from tests.unit.test_startup_imports import HEAVY, loaded_by

pytestmark = [pytest.mark.docker]


def test_a_no_change_build_loads_no_engine_client(
    make_project: MakeProject, env: dict[str, str], tmp_path: Path
) -> None:
    folder = make_project()
    first = run_cli(["build", "job.py"], cwd=folder, env=env)
    assert first.returncode == 0, first.stderr
    tag = first.stdout.strip().splitlines()[-1]

    # The probe's own file goes outside the folder: it would change the content hash.
    seen = loaded_by(["build", "job.py"], tmp_path, env, cwd=folder)
    assert seen["code"] == 0, seen
    assert [m for m in HEAVY if m in seen["modules"]] == []  # type: ignore[operator]

    again = run_cli(["build", "job.py"], cwd=folder, env=env)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == tag
    assert "up to date; build skipped" in again.stdout


def test_an_engine_on_another_socket_is_found_through_docker_host(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    folder = make_project()
    assert run_cli(["build", "job.py"], cwd=folder, env=env).returncode == 0
    missing = run_cli(
        ["build", "job.py"], cwd=folder, env={**env, "DOCKER_HOST": f"unix://{folder}/no.sock"}
    )
    assert missing.returncode == 1
    assert "cannot reach a Docker engine" in missing.stderr and "no.sock" in missing.stderr
    assert "Traceback" not in missing.stderr
