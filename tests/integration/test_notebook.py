"""`caliban notebook` on the real engine: serves, takes its token, stops on Ctrl-C.

Offline on CI: the base image's Debian notebook package satisfies the image's
``pip install notebook`` without the network.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pexpect.popen_spawn import PopenSpawn

from caliban.dev.notebook import port_free
from tests.conftest import (
    CALIBAN,
    MakeProject,
    docker_cli,
    run_cli,
    store_containers,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

START = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def _end(child: PopenSpawn) -> None:
    """Kill the caliban process if it still runs, and close our ends of its pipes."""
    if child.proc.poll() is None:
        child.proc.kill()
    child.proc.wait()
    for pipe in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
        if pipe is not None:
            pipe.close()


def _poll(url: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _get(url)[0]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_notebook_serves_the_folder_with_its_token_and_ctrl_c_removes_it(
    make_project: MakeProject, env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    folder = make_project({"analysis.py": "x = 1\n"})
    port = _free_port()
    child = PopenSpawn(
        [CALIBAN, "notebook", "--bare", "-p", str(port)],
        cwd=str(folder),
        env=env,
        encoding="utf-8",
        timeout=START,
    )
    try:
        child.expect(r"is ready: (http://127\.0\.0\.1:(\d+)/tree\?token=(\S+))")
        url, shown_port, token = child.match.groups()
        assert int(shown_port) == port
        assert _poll(f"http://127.0.0.1:{port}/api") == 200
        # The token printed is the one the server takes, and it is needed.
        assert _get(f"http://127.0.0.1:{port}/api/contents")[0] == 403
        status, body = _get(f"http://127.0.0.1:{port}/api/contents", token)
        assert status == 200
        listed = {item["name"] for item in json.loads(body)["content"]}
        assert {"analysis.py", "job.py"} <= listed  # the project folder, live
        # Published on the loopback interface only.
        (container,) = store_containers(home, **{"caliban.kind": "notebook"})
        ports = docker_cli("port", container).split()
        assert f"127.0.0.1:{port}" in ports and f"0.0.0.0:{port}" not in ports
        assert url.startswith(f"http://127.0.0.1:{port}/")
        child.kill(signal.SIGINT)  # what Ctrl-C sends
        assert child.wait() == 130
    finally:
        _end(child)
    assert store_containers(home) == []
    assert port_free(port)


def test_default_port_is_the_first_free_one_from_8888(
    make_project: MakeProject, env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    folder = make_project()
    expected = next(p for p in range(8888, 9100) if port_free(p))
    child = PopenSpawn(
        [CALIBAN, "notebook", "--bare", "--verbose"],
        cwd=str(folder),
        env=env,
        encoding="utf-8",
        timeout=START,
    )
    try:
        # --verbose streams the server's own log.
        child.expect(r"(NotebookApp|ServerApp)\]")
        child.expect(r"is ready: http://127\.0\.0\.1:(\d+)/")
        assert int(child.match.group(1)) == expected
        child.kill(signal.SIGTERM)
        assert child.wait() == 130
    finally:
        _end(child)
    assert store_containers(home) == []


def test_a_port_in_use_is_refused_before_anything_is_built(
    make_project: MakeProject, env: dict[str, str], home: Path
) -> None:
    folder = make_project()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["notebook", "-p", str(port)], cwd=folder, env=env, timeout=120)
    assert result.returncode == 2
    assert f"port {port} is already in use" in result.stderr
    assert "building" not in result.stdout
    assert not (home / "caliban.db").exists()  # nothing written


def test_a_server_that_dies_at_start_is_explained_and_removed(
    make_project: MakeProject, env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    folder = make_project()
    # sh instead of python: `sh -m notebook ...` fails at once, naming the file it lacks.
    result = run_cli(
        ["notebook", "--bare", "-p", str(_free_port()), "--docker_run_args=--entrypoint /bin/sh"],
        cwd=folder,
        env=env,
        timeout=START,
    )
    assert result.returncode == 1
    assert re.search(r"exited with code [1-9]\d* before answering; its last output:", result.stderr)
    assert "notebook" in result.stderr.split("its last output:")[1]
    assert store_containers(home) == []
