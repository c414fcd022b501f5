"""`caliban shell` driven through a real pseudo-terminal, on the real engine.

Each test runs the installed console script in a pty (pexpect), as a person at
a terminal would, and checks what they care about: who they are inside, that
files they create belong to them on the host, that the terminal behaves
(size, Ctrl-C), that the exit code comes back and that no container is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from caliban.session import host_user
from tests.conftest import (
    CALIBAN,
    MakeProject,
    docker_cli,
    store_containers,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Generous: the first test of a run may build the image.
START = 300


def _spawn(
    folder: Path, env: dict[str, str], *args: str, dims: tuple[int, int] = (24, 80)
) -> pexpect.spawn:
    child = pexpect.spawn(
        CALIBAN,
        ["shell", *args],
        cwd=str(folder),
        env=env,
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
        dimensions=dims,
    )
    return child


def _ready(child: pexpect.spawn) -> None:
    """Wait for a working shell: it evaluates what we type (the echo of the
    typed line itself does not match)."""
    child.sendline("echo READY$((20+22))")
    child.expect("READY42", timeout=START)


def _finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return int(child.exitstatus)


@pytest.fixture
def shell_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    host_home = tmp_path / "host-home"
    host_home.mkdir()
    # Read only if the home folder is mounted as the container user's home.
    (host_home / ".bashrc").write_text('PS1="calsh> "\n')
    return {**env, "HOME": str(host_home), "SHELL": "/bin/bash", "TERM": "xterm"}


def test_shell_runs_as_the_host_user_in_the_live_folder_and_returns_its_exit_code(
    make_project: MakeProject, shell_env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    folder = make_project()
    host_home = Path(shell_env["HOME"])
    child = _spawn(folder, shell_env)
    # The banner names the image and the user before the prompt.
    child.expect(r"bash shell in (caliban-\S+) as (\S+) \((\d+):(\d+)\)", timeout=START)
    assert (int(child.match.group(3)), int(child.match.group(4))) == (os.getuid(), os.getgid())
    child.expect("calsh> ", timeout=START)  # the mounted home's .bashrc ran

    child.sendline("echo id=$(id -u):$(id -g) home=$HOME pwd=$PWD")
    child.expect(r"id=(\d+):(\d+) home=(\S+) pwd=(\S+)")
    uid, gid, home_inside, pwd = child.match.groups()
    assert (int(uid), int(gid)) == (os.getuid(), os.getgid())
    assert home_inside == host_user().home and pwd == "/usr/app"

    # Exactly one shell container, labelled for this store, while it runs.
    assert len(store_containers(home, **{"caliban.kind": "shell"})) == 1

    # The folder is live: files made inside appear on the host, owned by the host user.
    child.sendline("echo made-inside > from-shell.txt && cat job.py | wc -l && echo wrote-$((6*7))")
    child.expect("wrote-42")
    made = folder / "from-shell.txt"
    assert made.read_text() == "made-inside\n"
    assert (made.stat().st_uid, made.stat().st_gid) == (os.getuid(), os.getgid())

    child.sendline("exit 7")
    assert _finish(child) == 7
    # bash wrote its history into the mounted home, as the host user.
    history = host_home / ".bash_history"
    assert "from-shell.txt" in history.read_text()
    assert history.stat().st_uid == os.getuid()
    assert store_containers(home) == []


def test_the_images_python_stays_first_after_the_users_bashrc(
    make_project: MakeProject, shell_env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    """A host .bashrc that puts another python3 first (pyenv, conda init) is
    overruled, and the shell says which file did it."""
    folder = make_project()
    host_home = Path(shell_env["HOME"])
    fake = host_home / "hostpy" / "bin"
    fake.mkdir(parents=True)
    (fake / "python3").write_text("#!/bin/sh\necho HOST-PYTHON\n")
    (fake / "python3").chmod(0o755)
    (host_home / ".bashrc").write_text('PS1="calsh> "\nexport PATH="$HOME/hostpy/bin:$PATH"\n')
    child = _spawn(folder, shell_env)
    child.expect(
        r"caliban: ~/\.bashrc put \S+/hostpy/bin/python3 ahead of (\S+) on PATH", timeout=START
    )
    image_python = child.match.group(1)
    _ready(child)
    # Split so that the echo of the typed line does not match.
    child.sendline('echo "wh""ich=$(command -v python3)"; python3 -c "print(6*7+100)"')
    child.expect(r"which=(/\S+)")
    assert child.match.group(1) == image_python
    child.expect("142")
    child.sendline("exit 0")
    assert _finish(child) == 0


def test_terminal_size_follows_the_window_and_ctrl_c_goes_to_the_shell(
    make_project: MakeProject, env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    folder = make_project()
    child = _spawn(folder, {**env, "TERM": "xterm"}, "--bare", dims=(31, 97))
    _ready(child)
    child.sendline("stty size")
    child.expect("31 97")
    child.setwinsize(40, 123)  # SIGWINCH to caliban, forwarded as a resize
    child.sendline("stty size")
    child.expect("40 123")

    # Raw mode: Ctrl-C is a byte for the shell, which interrupts its command
    # and carries on; caliban does not stop.
    child.sendline("sleep 60")
    child.expect("sleep 60")
    child.send("\x03")
    child.sendline("echo after-$?")
    child.expect("after-130")
    child.sendline("echo still-$((1+1))")
    child.expect("still-2")
    child.sendeof()  # Ctrl-D at the prompt ends the shell: exit code 0
    assert _finish(child) == 0
    assert store_containers(home) == []


def test_the_terminal_is_back_to_normal_afterwards(
    make_project: MakeProject, env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    """Raw mode is for the session only: the user's own shell gets its
    terminal back with echo and line editing."""
    folder = make_project()
    outer = pexpect.spawn(
        "/bin/bash",
        ["--norc", "--noprofile"],
        cwd=str(folder),
        env={**env, "PS1": "outer$ ", "TERM": "xterm"},
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
    )
    outer.expect(r"outer\$ ")
    outer.sendline(f"{CALIBAN} shell --bare; echo caliban-rc=$?")
    _ready(outer)
    outer.sendline("exit 5")
    outer.expect("caliban-rc=5", timeout=60)
    outer.sendline("stty -a | tr ' ' '\\n' | grep -E -x -- '-?(icanon|echo|isig)' | tr '\\n' ,")
    outer.expect(r"((?:-?(?:icanon|isig|echo),){3})")
    assert set(outer.match.group(1).strip(",").split(",")) == {"icanon", "isig", "echo"}
    outer.sendline("exit 0")
    outer.expect(pexpect.EOF)
    outer.close()
    assert store_containers(home) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_to_caliban_hang_up_the_shell_and_remove_the_container(
    make_project: MakeProject,
    env: dict[str, str],
    home: Path,
    remove_leftovers: None,
    sig: signal.Signals,
) -> None:
    folder = make_project()
    child = _spawn(folder, env, "--bare")
    _ready(child)
    assert len(store_containers(home)) == 1
    child.kill(sig)
    code = _finish(child)
    # SIGINT/SIGTERM: caliban's "interrupted"; SIGHUP (terminal closed): the
    # shell's own answer to a hangup, 128 + 1.
    assert code == (129 if sig == signal.SIGHUP else 130)
    assert store_containers(home) == []


def test_a_shell_left_by_a_killed_caliban_is_removed_by_the_next_one(
    make_project: MakeProject, env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    folder = make_project()
    first = _spawn(folder, env, "--bare")
    _ready(first)
    (orphan,) = store_containers(home)
    first.kill(signal.SIGKILL)  # no cleanup can run; the TTY shell keeps running
    first.close(force=True)
    assert store_containers(home) == [orphan]

    second = _spawn(folder, env, "--bare")
    _ready(second)
    running = store_containers(home)
    assert orphan not in running and len(running) == 1
    second.sendline("exit 0")
    assert _finish(second) == 0
    assert store_containers(home) == []


def test_gpus_are_given_as_in_caliban_run(
    make_project: MakeProject, env: dict[str, str], home: Path, remove_leftovers: None
) -> None:
    """Simulated GPUs (this machine has none): the container sees the GPU
    environment a job holding them would see, and the banner names them."""
    folder = make_project()
    child = _spawn(folder, {**env, "CALIBAN_SIMULATED_GPUS": "0,1,2"}, "--bare", "--gpu_ids", "1,2")
    child.expect(r"shell in \S+ as \S+ \(\d+:\d+\), GPUs 1,2", timeout=START)
    child.sendline(
        "echo gpus$((1+1))=$CALIBAN_GPU_IDS/$NVIDIA_VISIBLE_DEVICES/$CUDA_VISIBLE_DEVICES."
    )
    child.expect(r"gpus2=(\S*)/(\S*)/(\S*)\.")
    assert child.match.groups() == ("1,2", "1,2", "0,1")
    child.sendline("exit 0")
    assert _finish(child) == 0
    assert store_containers(home) == []


def _docker_socket() -> Path | None:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return None
    path = Path(host.removeprefix("unix://"))
    return path if path.exists() else None


@pytest.fixture
def other_user() -> Iterator[tuple[int, int, Path]]:
    """A uid/gid that is not ours and a world-traversable scratch folder it owns."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    uid = gid = 23456
    scratch = Path(tempfile.mkdtemp(prefix="caliban-shell-user-", dir="/tmp"))
    scratch.chmod(0o755)
    try:
        yield uid, gid, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_files_belong_to_a_non_root_host_user(
    env: dict[str, str], other_user: tuple[int, int, Path]
) -> None:
    """The property the original got wrong for some users: whoever runs caliban
    owns what the shell writes, in the project folder and in their home."""
    uid, gid, scratch = other_user
    socket = _docker_socket()
    if socket is None:
        pytest.skip("the engine is not on a local unix socket")
    mode = socket.stat()
    if not (mode.st_mode & stat.S_IRGRP and mode.st_mode & stat.S_IWGRP):
        pytest.skip(f"{socket} is not group read/writable; another user cannot reach it")
    folder, user_home, caliban_home = scratch / "proj", scratch / "home", scratch / "caliban"
    for path in (folder, user_home, caliban_home):
        path.mkdir()
    (folder / ".calibanconfig.json").write_text('{"default_mode": "cpu"}')
    (folder / "hello.py").write_text("print('hello')\n")
    (user_home / ".bashrc").write_text('PS1="other> "\n')
    for path in (folder, user_home, caliban_home, *folder.iterdir(), *user_home.iterdir()):
        os.chown(path, uid, gid)
    user_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(user_home),
        "USER": "calibantester",
        "LOGNAME": "calibantester",
        "SHELL": "/bin/bash",
        "TERM": "xterm",
        "CALIBAN_HOME": str(caliban_home),
        "CALIBAN_BASE_IMAGE": env["CALIBAN_BASE_IMAGE"],
        "CALIBAN_LABELS": env["CALIBAN_LABELS"],
    }
    if "DOCKER_HOST" in os.environ:
        user_env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    # The socket's group as a supplementary group: the usual `docker` group set-up.
    child = pexpect.spawn(
        "setpriv",
        [f"--reuid={uid}", f"--regid={gid}", f"--groups={mode.st_gid}", "--", CALIBAN, "shell"],
        cwd=str(folder),
        env=user_env,
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
    )
    try:
        child.expect(rf"as calibantester \({uid}:{gid}\)", timeout=START)
        child.expect("other> ", timeout=START)
        child.sendline("echo id=$(id -u):$(id -g) home=$HOME")
        child.expect(r"id=(\d+):(\d+) home=(\S+)")
        assert child.match.groups() == (str(uid), str(gid), "/home/calibantester")
        child.sendline("touch /usr/app/made.txt ~/in-home.txt && echo done-$((2*4))")
        child.expect("done-8")
        child.sendline("exit 3")
        assert _finish(child) == 3
    finally:
        if child.isalive():
            child.terminate(force=True)
        if (caliban_home / "caliban.db").exists():
            ids = store_containers(caliban_home)
            if ids:
                docker_cli("rm", "-fv", *ids, check=False)
    for made in (folder / "made.txt", user_home / "in-home.txt"):
        assert (made.stat().st_uid, made.stat().st_gid) == (uid, gid), made
    assert store_containers(caliban_home) == []
