"""The pure parts of `caliban shell` / `caliban notebook`: container bodies, shell
choice, ports, URLs, the raw terminal, and the command-line surface."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from caliban.core.dockerargs import parse_docker_run_args
from caliban.core.dockerfile import ImageUser
from caliban.dev import notebook as nb
from caliban.dev import shell as ia
from caliban.dev import terminal as term
from caliban.errors import ValidationError

ALICE = ImageUser(1000, 1000, "alice")
ROOT = ImageUser(0, 0, "root")
CALIBAN = str(Path(sys.executable).with_name("caliban"))


# -- shell choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "login", "home", "expected"),
    [
        (None, None, True, "bash"),  # $SHELL unset: the original crashed here
        (None, "", True, "bash"),
        (None, "/usr/bin/zsh", True, "zsh"),
        (None, "/usr/bin/zsh", False, "bash"),  # --bare: no .zshrc to honour
        (None, "/bin/bash", True, "bash"),
        ("zsh", None, False, "zsh"),  # asked for explicitly
        ("bash", "/bin/zsh", True, "bash"),
    ],
)
def test_choose_shell(requested: str | None, login: str | None, home: bool, expected: str) -> None:
    assert ia.choose_shell(requested, login, home_mounted=home) == expected


def test_a_given_image_gets_bash_unless_zsh_is_asked_for() -> None:
    assert ia.choose_shell(None, "/bin/zsh", home_mounted=True, building=False) == "bash"
    assert ia.choose_shell("zsh", "/bin/zsh", home_mounted=True, building=False) == "zsh"


def test_choose_shell_refuses_unknown_shells() -> None:
    with pytest.raises(ValidationError, match="--shell 'fish'"):
        ia.choose_shell("fish", "/bin/fish", home_mounted=True)


# -- container bodies --------------------------------------------------------------------------


def test_shell_config_is_an_attachable_tty_as_the_host_user(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = ia.shell_config(
        image="caliban-p:abc",
        shell="bash",
        user=ALICE,
        folder=tmp_path,
        home=home,
        store_id="s1",
        labels={"team": "vision"},
        term="xterm-256color",
    )
    assert cfg["Image"] == "caliban-p:abc"
    # Through the wrapper that keeps the image's Python first (caliban/dev/shellrc.py).
    assert cfg["Entrypoint"][:2] == ["/bin/sh", "-c"] and "/bin/bash" in cfg["Entrypoint"][2]
    assert cfg["Cmd"] == []
    assert cfg["Tty"] and cfg["OpenStdin"] and cfg["StdinOnce"] and cfg["AttachStdin"]
    assert cfg["User"] == "1000:1000" and cfg["WorkingDir"] == "/usr/app"
    assert cfg["HostConfig"]["Mounts"] == [
        {"Type": "bind", "Source": str(tmp_path), "Target": "/usr/app"},
        {"Type": "bind", "Source": str(home), "Target": "/home/alice"},
    ]
    assert cfg["Labels"] == {
        "team": "vision",
        "caliban.managed": "true",
        "caliban.kind": "shell",
        "caliban.pid": str(os.getpid()),
        "caliban.host": socket.gethostname(),
        "caliban.store": "s1",
    }
    # Same container defaults as jobs; but a shell is not a job.
    assert cfg["HostConfig"]["Init"] is True and "IpcMode" not in cfg["HostConfig"]
    assert "TERM=xterm-256color" in cfg["Env"]
    assert not any(e.startswith("CALIBAN_JOB_ID=") for e in cfg["Env"])


def test_root_gets_its_home_at_root_and_bare_mounts_only_the_folder(tmp_path: Path) -> None:
    cfg = ia.shell_config(
        image="i", shell="zsh", user=ROOT, folder=tmp_path, home=tmp_path / "h", store_id="s"
    )
    assert "/bin/zsh" in cfg["Entrypoint"][2] and cfg["User"] == "0:0"
    assert cfg["HostConfig"]["Mounts"][1]["Target"] == "/root"
    bare = ia.shell_config(
        image="i", shell="bash", user=ROOT, folder=tmp_path, home=None, store_id="s"
    )
    assert [m["Target"] for m in bare["HostConfig"]["Mounts"]] == ["/usr/app"]


def test_docker_run_args_apply_last_and_clashing_mounts_are_refused(tmp_path: Path) -> None:
    options = parse_docker_run_args("--user 0:0 -e A=1 --shm-size 1g")
    cfg = ia.shell_config(
        image="i", shell="bash", user=ALICE, folder=tmp_path, home=None, store_id="s",
        options=options,
    )  # fmt: skip
    assert cfg["User"] == "0:0" and "A=1" in cfg["Env"]
    assert cfg["HostConfig"]["ShmSize"] == 1 << 30
    clash = parse_docker_run_args("-v /data:/usr/app")
    with pytest.raises(ValidationError, match="/usr/app is already mounted"):
        ia.shell_config(
            image="i", shell="bash", user=ALICE, folder=tmp_path, home=None, store_id="s",
            options=clash,
        )  # fmt: skip


def test_notebook_config_publishes_on_loopback_with_our_token(tmp_path: Path) -> None:
    cfg = nb.notebook_config(
        image="i", lab=False, port=8890, token="tok", user=ALICE, folder=tmp_path, home=None,
        store_id="s",
    )  # fmt: skip
    assert cfg["Entrypoint"] == ["python3"]
    assert cfg["Cmd"] == ["-m", "notebook", "--ip=0.0.0.0", "--port=8890", "--no-browser"]
    assert "JUPYTER_TOKEN=tok" in cfg["Env"]
    assert cfg["ExposedPorts"] == {"8890/tcp": {}}
    assert cfg["HostConfig"]["PortBindings"] == {
        "8890/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8890"}]
    }
    assert cfg["Labels"]["caliban.kind"] == "notebook" and not cfg["Tty"]


def test_notebook_config_lab_root_and_extra_published_ports(tmp_path: Path) -> None:
    cfg = nb.notebook_config(
        image="i", lab=True, port=9000, token="t", user=ROOT, folder=tmp_path, home=None,
        store_id="s", options=parse_docker_run_args("-p 0.0.0.0:9999:9000"),
    )  # fmt: skip
    assert cfg["Cmd"][:2] == ["-m", "jupyterlab"] and cfg["Cmd"][-1] == "--allow-root"
    # The user may publish the same server elsewhere too (e.g. on all interfaces).
    assert cfg["HostConfig"]["PortBindings"]["9000/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": "9000"},
        {"HostIp": "0.0.0.0", "HostPort": "9999"},
    ]
    # A non-root user who asks for root in the container gets --allow-root too.
    as_root = nb.notebook_config(
        image="i", lab=False, port=9000, token="t", user=ALICE, folder=tmp_path, home=None,
        store_id="s", options=parse_docker_run_args("--user root"),
    )  # fmt: skip
    assert as_root["Cmd"].count("--allow-root") == 1


def test_notebook_url() -> None:
    assert nb.notebook_url(8888, "abc", lab=False) == "http://127.0.0.1:8888/tree?token=abc"
    assert nb.notebook_url(8899, None, lab=True) == "http://127.0.0.1:8899/lab"


@pytest.mark.parametrize("version", ["6.5.7", "7.*", "4.2.0rc1", "7.0.0a1"])
def test_jupyter_versions_accepted(version: str) -> None:
    nb.check_jupyter_version(version)


@pytest.mark.parametrize("version", ["", "6 && rm -rf /", "-U", "x" * 80])
def test_jupyter_versions_refused(version: str) -> None:
    with pytest.raises(ValidationError, match="not a version"):
        nb.check_jupyter_version(version)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_only_containers_of_dead_local_processes_are_orphans() -> None:
    host = socket.gethostname()
    dead = str(_dead_pid())
    shell = {"caliban.kind": "shell", "caliban.host": host}
    assert ia.is_orphan({**shell, "caliban.pid": dead}, host=host)
    assert ia.is_orphan({**shell, "caliban.kind": "notebook", "caliban.pid": dead}, host=host)
    # A live session (ours, or another user's: pid 1), another host, a job, junk: kept.
    assert not ia.is_orphan({**shell, "caliban.pid": str(os.getpid())}, host=host)
    assert not ia.is_orphan({**shell, "caliban.pid": "1"}, host=host)
    assert not ia.is_orphan({**shell, "caliban.pid": dead}, host=host + "-other")
    assert not ia.is_orphan(
        {"caliban.job": "j", "caliban.host": host, "caliban.pid": dead}, host=host
    )
    assert not ia.is_orphan({**shell, "caliban.pid": "x"}, host=host)
    assert not ia.is_orphan(shell, host=host)


# -- ports -------------------------------------------------------------------------------------


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_listening_port_is_not_free_and_is_skipped(listening: int) -> None:
    assert not nb.port_free(listening)
    chosen = nb.first_free_port(listening, count=50)
    assert chosen != listening and nb.port_free(chosen)


def test_check_port_explains_a_busy_port(listening: int) -> None:
    with pytest.raises(ValidationError, match=f"port {listening} is already in use") as err:
        nb.check_port(listening)
    assert err.value.exit_code == 2
    with pytest.raises(ValidationError, match="1 to 65535"):
        nb.check_port(70000)


def test_no_free_port_in_range(listening: int) -> None:
    with pytest.raises(ValidationError, match="no free port"):
        nb.first_free_port(listening, count=1)


# -- home, banner ------------------------------------------------------------------------------


def test_host_home_prefers_home_and_ignores_missing_folders(tmp_path: Path) -> None:
    assert ia.host_home({"HOME": str(tmp_path)}, os.getuid()) == tmp_path
    assert ia.host_home({"HOME": str(tmp_path / "gone")}, os.getuid()) is None
    assert ia.host_home({"HOME": "relative"}, os.getuid()) is None
    # Unset: the password database's entry.
    from_passwd = ia.host_home({}, os.getuid())
    assert from_passwd is None or from_passwd.is_dir()


def test_banner_names_image_user_and_mounts(tmp_path: Path) -> None:
    text = ia.banner(
        what="bash shell", image="caliban-p:1", user=ALICE, folder=tmp_path, home=None, bare=True
    )
    first, second = text.splitlines()
    assert "caliban-p:1" in first and "alice (1000:1000)" in first
    assert f"{tmp_path} at /usr/app" in second and "--bare" in second
    with_home = ia.banner(
        what="x", image="i", user=ALICE, folder=tmp_path, home=Path("/h"), bare=False,
        gpu_ids=("0", "1"),
    )  # fmt: skip
    assert "/h at /home/alice" in with_home and "GPUs 0,1" in with_home


# -- the raw terminal --------------------------------------------------------------------------


def test_raw_terminal_is_restored_even_after_an_error() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ECHO
        with pytest.raises(RuntimeError), term.raw_terminal(slave):
            during = termios.tcgetattr(slave)
            assert not during[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
            raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


# -- command line ------------------------------------------------------------------------------


def _cli(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CALIBAN, *args], stdin=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_shell_without_a_terminal_is_refused_at_once(tmp_path: Path) -> None:
    env_home = tmp_path / "caliban-home"
    result = subprocess.run(
        [CALIBAN, "shell", "--nogpu"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "CALIBAN_HOME": str(env_home), "DOCKER_HOST": "tcp://127.0.0.1:9"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"caliban: {ia.NO_TTY}"
    # Nothing was written (and no engine was needed: DOCKER_HOST points nowhere).
    assert not env_home.exists()


def test_unknown_shell_is_a_usage_error() -> None:
    result = _cli("shell", "--shell", "fish")
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_notebook_port_must_be_a_port(port: str) -> None:
    result = _cli("notebook", "--port", port)
    assert result.returncode == 2 and "--port" in result.stderr


def test_parser_knows_the_original_flags() -> None:
    from caliban.cli.main import build_parser

    parser = build_parser()
    ns = parser.parse_args(
        ["notebook", "-p", "9000", "-jv", "7.2.2", "--lab", "--bare", "--nogpu",
         "--docker_run_args", "--shm-size 1g", "--extras", "x"]
    )  # fmt: skip
    assert (ns.port, ns.jupyter_version, ns.lab, ns.bare, ns.use_gpu) == (
        9000, "7.2.2", True, True, False,
    )  # fmt: skip
    assert ns.docker_run_args == "--shm-size 1g" and ns.extras == ["x"]
    ns = parser.parse_args(
        ["shell", "--shell", "zsh", "--image_id", "img", "-d", "data", "--gpu_ids", "0,1",
         "--no_cache"]
    )  # fmt: skip
    assert (ns.shell, ns.image_id, ns.dirs, ns.gpu_ids, ns.no_cache) == (
        "zsh", "img", ["data"], "0,1", True,
    )  # fmt: skip
    assert ns.handler.__name__ == "cmd_shell"
