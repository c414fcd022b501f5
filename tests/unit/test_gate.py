"""The gated container body: the helper in front of exactly the argv the engine
would have run, nothing else changed."""

from __future__ import annotations

import os
from pathlib import Path

from caliban.platforms.local import gate


def _config(**kw: object) -> dict[str, object]:
    return {"Image": "img", "Env": ["A=1"], "HostConfig": {"Init": True}, **kw}


def test_the_image_entrypoint_and_cmd_are_combined_as_the_engine_does() -> None:
    image = {"Entrypoint": ["python3", "-u"], "Cmd": ["default.py"]}
    out = gate.gated_config(_config(Cmd=["--x", "1"]), image, Path("/g/abc"))
    assert out is not None
    assert out["Entrypoint"] == ["/.caliban-gate/gate", "/.caliban-gate"]
    # A container's Cmd replaces the image's; its ENTRYPOINT stays.
    assert out["Cmd"] == ["python3", "-u", "--x", "1"]
    assert out["Env"] == ["A=1"]
    assert out["Labels"] == {"caliban.gate": "1"}
    assert out["HostConfig"]["Mounts"] == [
        {"Type": "bind", "Source": "/g/abc", "Target": "/.caliban-gate", "ReadOnly": True}
    ]
    assert out["HostConfig"]["Init"] is True


def test_a_container_entrypoint_drops_the_image_cmd() -> None:
    image = {"Entrypoint": ["/bin/ignored"], "Cmd": ["ignored"]}
    out = gate.gated_config(_config(Entrypoint=["/probe"]), image, Path("/g"))
    assert out is not None and out["Cmd"] == ["/probe"]


def test_nothing_to_run_is_not_gated() -> None:
    assert gate.gated_config(_config(), {}, Path("/g")) is None


def test_a_shared_pid_namespace_or_a_tty_is_never_gated() -> None:
    assert gate.gateable(_config())
    assert not gate.gateable(_config(HostConfig={"PidMode": "host"}))
    assert not gate.gateable(_config(Tty=True))


def test_only_a_local_engine_can_share_the_fifos() -> None:
    assert gate.local_engine({})
    assert gate.local_engine({"DOCKER_HOST": "unix:///run/docker.sock"})
    assert not gate.local_engine({"DOCKER_HOST": "tcp://10.0.0.1:2376"})


async def test_the_exit_status_can_be_read_at_once_once_written(tmp_path: Path) -> None:
    """What the helper writes before it exits is there to read without waiting,
    even when nobody was waiting on it (the output's end came first)."""
    helper = tmp_path / "gate-helper"
    helper.write_bytes(b"")
    gates = gate.Gates(helper)
    try:
        g = gates.make()
        fd = os.open(g.directory / "done", os.O_WRONLY | os.O_NONBLOCK)
        try:
            assert g.ended_now() is None  # not armed: the first byte is not a status
            os.write(fd, gate.Gate.ARMED)
            await g.armed()
            assert g.ended_now() is None  # armed, the job not over
            os.write(fd, bytes([143]))
            assert g.ended_now() == 143
            assert g.ended_now() is None  # read once
        finally:
            os.close(fd)
        g.close()
        assert g.ended_now() is None  # closed: nothing more to read
    finally:
        gates.close()
