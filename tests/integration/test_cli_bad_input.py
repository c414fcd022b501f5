"""Bad input through the real CLI: exit 2, one line, nothing built, written or run.

The Docker engine is pointed at a socket that does not exist: a command that got as
far as building or running would fail with exit 1 ("cannot reach a Docker engine"),
so exit 2 proves the refusal came first. The history file must not exist afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import CALIBAN, MakeProject, docker_cli, run_cli

SETUP_PY = 'from setuptools import setup\nsetup(name="p", extras_require={"dev": []})\n'


@pytest.fixture
def no_docker_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CALIBAN_HOME=str(tmp_path / "home"),
        COLUMNS="200",
        DOCKER_HOST="unix:///nonexistent/docker.sock",
        GCE_METADATA_HOST="127.0.0.1:9",  # no metadata server answers there
    )
    for name in ("CALIBAN_SIMULATED_GPUS", "GOOGLE_APPLICATION_CREDENTIALS", "KUBECONFIG"):
        env.pop(name, None)
    return env


def _refused(result: subprocess.CompletedProcess[str], needle: str, env: dict[str, str]) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, lines  # the message, and at most a hint
    assert needle in result.stderr, result.stderr
    home = Path(env["CALIBAN_HOME"])
    assert not (home / "caliban.db").exists()
    assert not list(home.parent.glob("**/*.log"))


def _config(value: str) -> dict[str, str]:
    return {"exp.json": value}


RUN = ["run", "--nogpu", "--experiment_config", "exp.json", "job.py"]
CLOUD = ["cloud", "--nogpu", "--project_id", "my-project"]

CASES = [
    pytest.param(RUN, _config('{"name": "a\\u0000b"}'), "NUL byte", id="nul-value"),
    pytest.param(RUN, _config('{"lr": [0.1, NaN]}'), "NaN is not a JSON number", id="nan"),
    pytest.param(RUN, _config('{"lr": 1e999}'), "1e999 is too large", id="1e999"),
    pytest.param(
        RUN, _config('{"lr": [1, 2],\n "lr": [3]}'), "key 'lr' appears twice", id="dup-key"
    ),
    pytest.param(
        ["run", "--nogpu", "job.py"],
        {".calibanconfig.json": '{"default_mode": "cpu", "default_mode": "gpu"}'},
        "key 'default_mode' appears twice",
        id="dup-key-calibanconfig",
    ),
    pytest.param(
        ["run", "--nogpu", "job.py"], {".dockerignore": "*.py\n"}, "excluded by", id="ignored"
    ),
    pytest.param(
        ["run", "--nogpu", "job.py"],
        {
            "requirements.txt": "six\n",
            "ca.pem": "not a certificate\n",
            ".calibanconfig.json": '{"build_env": {"ca_bundle": "ca.pem"}}',
        },
        "build_env.ca_bundle 'ca.pem' is not a PEM file",
        id="ca-not-pem",
    ),
    pytest.param(
        ["run", "--nogpu", "job.py"],
        {".calibanconfig.json": '{"build_env": {"ca_bundle": "missing.pem"}}'},
        "build_env.ca_bundle 'missing.pem': cannot read it",
        id="ca-missing",
    ),
    pytest.param(
        ["run", "--nogpu", "job.py"],
        {".calibanconfig.json": '{"build_env": {"index_url": "pypi.corp/simple"}}'},
        "key 'build_env.index_url' must be a URL",
        id="index-url",
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_run_args=--privileged", "job.py"],
        {},
        "--privileged",
        id="privileged",
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_run_args=--gpus all", "job.py"], {}, "--gpus", id="gpus"
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_run_args=--restart always", "job.py"],
        {},
        "'--restart' cannot be used: caliban waits for each job",
        id="owned-flag",
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_run_args=--entrypoint sh", "job.py"],
        {},
        "--entrypoint is caliban's to set",
        id="entrypoint",
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_run_args=--cpuset-cpu 0", "job.py"],
        {},
        "unknown docker run flag '--cpuset-cpu'",
        id="unknown-flag",
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_run_args=--sysctl kernel.shmmax", "job.py"],
        {},
        "--sysctl kernel.shmmax: expected key=value",
        id="bad-flag-value",
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_create_json", "create.json", "job.py"],
        {"create.json": '{"HostConfig": {"AutoRemove": true}}'},
        "HostConfig.AutoRemove cannot be set",
        id="create-json-owned",
    ),
    pytest.param(
        ["run", "--nogpu", "--docker_create_json", "create.json", "job.py"],
        {"create.json": '{"HostConfig": '},
        "create.json is not JSON",
        id="create-json-broken",
    ),
    pytest.param(
        ["run", "--nogpu", "--image_id", "BAD REF!!", "job.py"],
        {},
        "--image_id 'BAD REF!!'",
        id="ref",
    ),
    pytest.param(["run", "--nogpu", "--xgroup", "..", "job.py"], {}, "--xgroup '..'", id="xg-.."),
    pytest.param(["run", "--nogpu", "--xgroup", "a\nb", "job.py"], {}, "--xgroup", id="xg-nl"),
    pytest.param(["run", "--nogpu", "--xgroup", "a b", "job.py"], {}, "--xgroup", id="xg-space"),
    pytest.param(["run", "--nogpu", "--xgroup", "x" * 300, "job.py"], {}, "--xgroup", id="xg-300"),
    pytest.param(
        ["run", "--nogpu", "--xgroup", "$(touch pwned)", "job.py"], {}, "--xgroup", id="xg-shell"
    ),
    pytest.param(["run", "--nogpu", "--extras", "dev", "job.py"], {}, "no setup.py", id="extras"),
    pytest.param(
        ["run", "--nogpu", "--extras", "nope", "job.py"],
        {"setup.py": SETUP_PY},
        "'nope': not in extras_require",
        id="extras-undeclared",
    ),
    pytest.param(
        ["run", "--nogpu", "--cloud_key", "key.json", "job.py"], {}, "--cloud_key", id="cloud-key"
    ),
    pytest.param(["run", "--bogus", "job.py"], {}, "unknown flag --bogus", id="bogus"),
    pytest.param(
        ["cloud", "--nogpu", "--project_id", "bad id!", "job.py"],
        {},
        "--project_id 'bad id!'",
        id="project-id",
    ),
    pytest.param(
        [*CLOUD, "--rate_limit", "nan", "job.py"], {}, "not a finite number", id="nan-rate"
    ),
    pytest.param(
        [*CLOUD, "--api_endpoint", "notaurl", "job.py"], {}, "--api_endpoint", id="endpoint"
    ),
    pytest.param([*CLOUD, "--image_tag", "BAD TAG", "job.py"], {}, "--image_tag", id="tag"),
    pytest.param([*CLOUD, "--region", "", "job.py"], {}, "--region '': empty", id="region"),
    pytest.param(
        [*CLOUD, "--xgroup", "../up", "job.py"], {}, "--xgroup '../up'", id="cloud-xgroup"
    ),
    pytest.param(
        ["cluster", "job", "submit", "--nogpu", "--dry_run", "--xgroup", "a b", "job.py"],
        {},
        "--xgroup 'a b'",
        id="cluster-xgroup",
    ),
    pytest.param(
        ["cluster", "job", "submit", "--dry_run", "--gpu_spec", "bogus", "job.py"],
        {},
        "bogus",
        id="cluster-dry-run-real-error",
    ),
]


@pytest.mark.parametrize(("args", "files", "needle"), CASES)
def test_bad_input_gets_one_line_and_exit_2(
    make_project: MakeProject,
    no_docker_env: dict[str, str],
    args: list[str],
    files: dict[str, str],
    needle: str,
) -> None:
    folder = make_project(files)
    _refused(run_cli(args, cwd=folder, env=no_docker_env, timeout=60), needle, no_docker_env)
    assert not (folder / "pwned").exists()


def test_a_script_linking_out_of_the_project(
    make_project: MakeProject, no_docker_env: dict[str, str], tmp_path: Path
) -> None:
    folder = make_project()
    (tmp_path / "secret.py").write_text("print('not yours')\n")
    (folder / "train.py").symlink_to(tmp_path / "secret.py")
    result = run_cli(["run", "--nogpu", "train.py"], cwd=folder, env=no_docker_env, timeout=60)
    _refused(result, "outside the project folder", no_docker_env)


def test_a_dir_linking_to_etc(make_project: MakeProject, no_docker_env: dict[str, str]) -> None:
    folder = make_project()
    (folder / "conf").symlink_to("/etc", target_is_directory=True)
    result = run_cli(
        ["run", "--nogpu", "-d", "conf", "job.py"], cwd=folder, env=no_docker_env, timeout=60
    )
    _refused(result, "--dir 'conf' leads to /etc", no_docker_env)


def test_expansion_takes_one_output_form(tmp_path: Path, no_docker_env: dict[str, str]) -> None:
    (tmp_path / "exp.json").write_text('{"a": [1, 2]}')
    result = run_cli(
        ["--pprint", "--print_flags", "exp.json"],
        cwd=tmp_path,
        env=no_docker_env,
        timeout=60,
        script="expansion",
    )
    assert result.returncode == 2
    assert "--print_flags: not allowed with argument --pprint" in result.stderr


def test_a_huge_sweep_is_refused_at_once(
    make_project: MakeProject, no_docker_env: dict[str, str]
) -> None:
    # 10**40 jobs: counted, not expanded, so this answers at once.
    config = json.dumps({f"k{i}": list(range(10)) for i in range(40)})
    folder = make_project(_config(config))
    for command in (RUN, [*CLOUD, "--experiment_config", "exp.json", "job.py"]):
        result = run_cli([*command, "--dry_run"], cwd=folder, env=no_docker_env, timeout=60)
        _refused(result, "expands to about 10^40 jobs", no_docker_env)


def test_max_sweep_sets_the_limit(make_project: MakeProject, no_docker_env: dict[str, str]) -> None:
    folder = make_project(_config('{"a": [1, 2, 3]}'))
    result = run_cli([*RUN[:1], "--max_sweep", "2", *RUN[1:]], cwd=folder, env=no_docker_env)
    _refused(result, "expands to 3 jobs, more than the limit of 2", no_docker_env)
    result = run_cli(
        [*RUN[:1], "--max_sweep", "3", "--dry_run", *RUN[1:]], cwd=folder, env=no_docker_env
    )
    assert result.returncode == 0, result.stderr
    assert "dry run: 3 job(s)" in result.stderr  # the summary; stdout holds the jobs


def test_a_cluster_dry_run_needs_no_credentials(
    make_project: MakeProject, no_docker_env: dict[str, str]
) -> None:
    folder = make_project(_config('{"a": [1, 2]}'))
    result = run_cli(
        [
            "cluster",
            "job",
            "submit",
            "--nogpu",
            "--dry_run",
            "--experiment_config",
            "exp.json",
            "job.py",
        ],
        cwd=folder,
        env=no_docker_env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [d["kind"] for d in yaml.safe_load_all(result.stdout)] == ["Job", "Job"]
    assert "dry run: 2 job(s)" in result.stderr
    assert not (Path(no_docker_env["CALIBAN_HOME"]) / "caliban.db").exists()


def _image_built(name: str) -> bool:
    return bool(docker_cli("image", "ls", "-q", f"caliban-{name}").strip())


@pytest.mark.docker
def test_an_unopenable_store_is_found_before_the_build(
    make_project: MakeProject, env: dict[str, str], tmp_path: Path
) -> None:
    name = f"storecheck-{uuid.uuid4().hex[:8]}"
    (tmp_path / "a-file").write_text("")
    env = {**env, "CALIBAN_HOME": str(tmp_path / "a-file" / "home")}
    folder = make_project(name=name)
    result = run_cli(["run", "--nogpu", "job.py"], cwd=folder, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "cannot open the history store" in result.stderr and "Traceback" not in result.stderr
    assert not _image_built(name)


@pytest.mark.docker
def test_a_read_only_store_is_found_before_the_build(
    make_project: MakeProject, env: dict[str, str]
) -> None:
    name = f"storecheck-{uuid.uuid4().hex[:8]}"
    folder = make_project(name=name)
    db = Path(env["CALIBAN_HOME"]) / "caliban.db"
    made = run_cli(["status"], cwd=folder, env=env, timeout=60)
    assert made.returncode == 0 and db.exists(), made.stderr
    root = os.geteuid() == 0
    if root:
        chattr = subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False)
        if chattr.returncode != 0:
            pytest.skip(f"cannot make a file read-only as root here: {chattr.stderr!r}")
    else:
        db.chmod(0o444)
    try:
        result = run_cli(["run", "--nogpu", "job.py"], cwd=folder, env=env, timeout=120)
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(db)], check=False)
        db.chmod(0o644)
    assert result.returncode == 2, result.stderr
    assert "cannot write to the history store" in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 2
    assert not _image_built(name)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_long_dry_run_stops_on_a_signal(
    make_project: MakeProject, no_docker_env: dict[str, str], sig: signal.Signals
) -> None:
    folder = make_project(_config(json.dumps({"a": list(range(1000)), "b": list(range(1000))})))
    proc = subprocess.Popen(
        [CALIBAN, *RUN[:1], "--max_sweep", "1000000", "--dry_run", *RUN[1:]],
        cwd=folder,
        env=no_docker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("job 1/1000000"), first
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "dry run: 1000000 job(s)" not in err  # it stopped, it did not finish
    db = Path(no_docker_env["CALIBAN_HOME"]) / "caliban.db"
    assert not db.exists()


def _job_states(db: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    except sqlite3.OperationalError:  # the store is still being created
        return {}
    return dict(rows)


@pytest.mark.docker
def test_a_signal_while_planning_leaves_no_job_planned(
    make_project: MakeProject, env: dict[str, str], base_image: str
) -> None:
    # Big enough that planning takes a while; the signal lands once rows appear.
    folder = make_project(_config(json.dumps({"a": list(range(200)), "b": list(range(200))})))
    db = Path(env["CALIBAN_HOME"]) / "caliban.db"
    proc = subprocess.Popen(
        [
            *(CALIBAN, "run", "--nogpu", "--max_sweep", "40000", "--image_id", base_image),
            *("--xgroup", "planning-sig", "--experiment_config", "exp.json", "job.py"),
        ],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while proc.poll() is None and not (db.exists() and sum(_job_states(db).values(), 0)):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    states = _job_states(db)
    assert states and "PLANNED" not in states, states
    assert set(states) <= {"STOPPED", "SUCCEEDED", "FAILED"}, states
    stopped = states.get("STOPPED", 0)
    assert stopped > 0
    again = run_cli(
        ["resubmit", "--xgroup", "planning-sig", "--dry_run"], cwd=folder, env=env, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert (
        f"dry run: {stopped + states.get('FAILED', 0)} job(s) would be resubmitted" in again.stdout
    )
