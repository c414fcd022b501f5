"""Container configs of local jobs, GPU environment, and CLI argument splitting."""

from __future__ import annotations

import pytest

from caliban.cli.flags import split_script_args
from caliban.core.dockerargs import parse_docker_run_args
from caliban.errors import ValidationError
from caliban.platforms.local.containers import DEFAULT_SHM_SIZE, container_config, rebind, with_gpus
from caliban.platforms.local.gpus import GpuInventory, detect, parse_ids
from caliban.session import _labels_from_env


def test_container_config_labels_and_defaults() -> None:
    base = {"Env": ["USER_VAR=1"], "Labels": {"team": "vision"}, "HostConfig": {"ShmSize": 1}}
    cfg = container_config(
        image="img:1", argv=["--lr", "0.1"], job_id="j1", xgroup="g", store_id="s1", base=base
    )
    assert cfg["Image"] == "img:1" and cfg["Cmd"] == ["--lr", "0.1"]
    assert cfg["Labels"] == {
        "team": "vision",
        "caliban.managed": "true",
        "caliban.job": "j1",
        "caliban.xgroup": "g",
        "caliban.store": "s1",
    }
    assert "CALIBAN_JOB_ID=j1" in cfg["Env"] and "USER_VAR=1" in cfg["Env"]
    assert cfg["HostConfig"] == {"ShmSize": 1, "Init": True}
    assert base["Env"] == ["USER_VAR=1"]  # the input is not modified


@pytest.mark.parametrize(
    ("flags", "host"),
    [
        # Private IPC with room for data loader workers, unless asked otherwise.
        ("", {"Init": True, "ShmSize": DEFAULT_SHM_SIZE}),
        ("--shm-size=1g", {"Init": True, "ShmSize": 1 << 30}),
        ("--ipc=host", {"Init": True, "IpcMode": "host"}),
        ("--ipc=shareable", {"Init": True, "IpcMode": "shareable", "ShmSize": DEFAULT_SHM_SIZE}),
        ("--ipc=none", {"Init": True, "IpcMode": "none"}),
    ],
)
def test_host_ipc_only_when_asked_for(flags: str, host: dict[str, object]) -> None:
    base = parse_docker_run_args(flags.split()).apply({})
    cfg = container_config(image="i", argv=[], job_id="j", xgroup="g", store_id="s", base=base)
    assert cfg["HostConfig"] == host


def test_gpus_become_env_and_device_requests() -> None:
    cfg = container_config(image="i", argv=[], job_id="j", xgroup="g", store_id="s")
    real = with_gpus(cfg, ["2", "3"], simulated=False)
    assert real["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "DeviceIDs": ["2", "3"], "Capabilities": [["gpu"]]}
    ]
    assert {"CALIBAN_GPU_IDS=2,3", "NVIDIA_VISIBLE_DEVICES=2,3", "CUDA_VISIBLE_DEVICES=0,1"} <= set(
        real["Env"]
    )
    fake = with_gpus(cfg, ["1"], simulated=True)
    assert "DeviceRequests" not in fake["HostConfig"] and "CALIBAN_GPU_IDS=1" in fake["Env"]
    assert with_gpus(cfg, [], simulated=False) is cfg


def test_rebind_moves_a_recorded_job_to_a_new_id() -> None:
    cfg = container_config(image="i", argv=["--a"], job_id="old", xgroup="g", store_id="s")
    new = rebind(cfg, "new")
    assert "CALIBAN_JOB_ID=new" in new["Env"] and "CALIBAN_JOB_ID=old" not in new["Env"]
    assert new["Labels"]["caliban.job"] == "new" and cfg["Labels"]["caliban.job"] == "old"


async def test_gpu_inventory_sources() -> None:
    assert await detect(("0", "1"), {}) == GpuInventory(("0", "1"), False, "--gpu_ids")
    simulated = await detect(None, {"CALIBAN_SIMULATED_GPUS": "0,1,2"})
    assert simulated.ids == ("0", "1", "2") and simulated.simulated
    # No nvidia-smi on this machine: nothing detected, and no error.
    assert (await detect(None, {"PATH": "/nonexistent"})).ids == ()


def test_gpu_id_parsing() -> None:
    assert parse_ids("0, 1,GPU-8f1a2b3c-0000") == ("0", "1", "GPU-8f1a2b3c-0000")
    for bad in ("0,0", "zero", "1;2"):
        with pytest.raises(ValidationError):
            parse_ids(bad)


def test_script_args_split_at_the_first_double_dash() -> None:
    assert split_script_args(["run", "t.py", "--", "--a", "--", "b"]) == (
        ["run", "t.py"],
        ["--a", "--", "b"],
    )
    assert split_script_args(["status"]) == (["status"], [])


def test_labels_from_the_environment() -> None:
    assert _labels_from_env({"CALIBAN_LABELS": "a=1, b = two ,"}) == {"a": "1", "b": "two"}
    with pytest.raises(ValidationError):
        _labels_from_env({"CALIBAN_LABELS": "novalue"})
