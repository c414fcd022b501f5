"""The core install works without the [cloud], [cluster] and [plot] extras; the commands that
need one fail with one line naming it, exit 2, nothing recorded.

The real console script runs with a sitecustomize that makes gcloud-aio-auth,
kubernetes-asyncio and matplotlib unimportable, as in a venv where only the core is installed
(scripts/install-matrix.sh checks that case with real venvs too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MakeProject, run_cli

BLOCKER = """
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("gcloud", "kubernetes_asyncio", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: unused}}]
contexts: [{name: lab, context: {cluster: c, user: u}}]
current-context: lab
"""

CLOUD_LINE = (
    "caliban: Google Cloud access needs gcloud-aio-auth, which is not installed: "
    "pip install 'caliban-async[cloud]'"
)
CLUSTER_LINE = (
    "caliban: Kubernetes support needs kubernetes_asyncio, which is not installed: "
    "pip install 'caliban-async[cluster]'"
)

PLOT_LINE = (
    "caliban: --plot_file needs matplotlib, which is not installed: "
    "pip install 'caliban-async[plot]'"
)


@pytest.fixture
def core_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "KUBECONFIG", "COLUMNS", "PROJECT_ID"):
        env.pop(var, None)
    env.update(
        PYTHONPATH=str(site),
        HOME=str(tmp_path),
        CALIBAN_HOME=str(tmp_path / "home"),
        DOCKER_HOST="unix:///nonexistent/docker.sock",
    )
    return env


def test_the_blocker_hides_both_libraries(core_env: dict[str, str], tmp_path: Path) -> None:
    probe = "import importlib.util as u; print(u.find_spec('yaml') is not None)\nimport {}"
    for module in ("gcloud.aio.auth", "kubernetes_asyncio"):
        done = subprocess.run(
            [sys.executable, "-c", probe.format(module)],
            env=core_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout == "True\n" and "ModuleNotFoundError" in done.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["cloud", "--dry_run", "--project_id", "my-project", "job.py"], CLOUD_LINE),
        (
            ["cloud", "--project_id", "my-project", "--experiment_config", "exp.json", "job.py"],
            CLOUD_LINE,
        ),
        (
            ["cluster", "job", "submit", "--kubeconfig", "kube.yaml", "--dry_run", "job.py"],
            CLUSTER_LINE,
        ),
        (["cluster", "job", "submit", "--kubeconfig", "kube.yaml", "job.py"], CLUSTER_LINE),
        (["cluster", "ls", "--project_id", "my-project"], CLUSTER_LINE),
        (["results", "--plot", "lr:acc", "--plot_file", "sweep.png"], PLOT_LINE),
    ],
)
def test_a_command_needing_a_missing_extra_says_which_in_one_line(
    make_project: MakeProject,
    core_env: dict[str, str],
    args: list[str],
    line: str,
) -> None:
    folder = make_project({"exp.json": '{"lr": [1, 2]}', "kube.yaml": KUBECONFIG})
    done = run_cli(args, cwd=folder, env=core_env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [line]
    assert done.stdout == ""
    assert not Path(core_env["CALIBAN_HOME"]).exists()
    assert not (folder / "sweep.png").exists()


def test_the_core_commands_work_without_the_extras(
    make_project: MakeProject, core_env: dict[str, str]
) -> None:
    folder = make_project({"exp.json": '{"lr": [0.1, 0.2], "deep": [true, false]}'})

    assert run_cli(["--help"], cwd=folder, env=core_env, timeout=60).returncode == 0
    dry = run_cli(
        ["run", "--dry_run", "--experiment_config", "exp.json", "job.py"],
        cwd=folder,
        env=core_env,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert [line.split(": docker run ")[0] for line in dry.stdout.splitlines()] == [
        f"job {i}/4" for i in range(1, 5)
    ]
    status = run_cli(["status", "--json"], cwd=folder, env=core_env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == []

    expansion = run_cli(
        ["--print_flags", "exp.json"], cwd=folder, env=core_env, timeout=60, script="expansion"
    )
    assert expansion.returncode == 0, expansion.stderr
    assert expansion.stdout.splitlines()[0] == "--lr 0.1 --deep"

    library = subprocess.run(
        [sys.executable, "-c", "import caliban, caliban.session; print(caliban.Session)"],
        env=core_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert library.returncode == 0 and "caliban.session.Session" in library.stdout
