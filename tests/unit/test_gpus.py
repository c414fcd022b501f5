"""GPU inventory as the driver names it: indexes, GPU- UUIDs, MIG instances."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from caliban.errors import ValidationError
from caliban.platforms.local import gpus
from caliban.platforms.local.gpus import GpuDevice

SAMPLES = Path(__file__).parent.parent / "fixtures" / "nvidia_smi"
MIG0 = "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"
GPU1 = "GPU-0e2bd9a5-b2ce-0d3f-5d5f-d1a9a1b5a4b0"
OLD_MIG = "MIG-GPU-2f3e4d5c-6b7a-8899-aabb-ccddeeff0011/0/0"


def _sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def _mixed() -> tuple[GpuDevice, ...]:
    return gpus.devices_from(_sample("list_mixed_mig.txt"), _sample("query_mixed_mig.csv"))


def test_plain_gpus_are_handed_out_by_uuid_and_shown_by_index() -> None:
    devices = gpus.devices_from(_sample("list_rtx.txt"), _sample("query_rtx.csv"))
    assert [(d.id[:12], d.index, d.gpu) for d in devices] == [
        ("GPU-a1b2c3d4", "0", "0"),
        ("GPU-0f9e8d7c", "1", "1"),
    ]


def test_mig_instances_replace_their_gpu_and_mig_without_instances_offers_nothing() -> None:
    devices = _mixed()
    assert [d.index for d in devices] == ["0:0", "0:1", "0:2", "1", "3:0"]
    assert devices[0] == GpuDevice(MIG0, "0:0", "0")
    assert devices[3].id == GPU1
    assert devices[4].id == OLD_MIG  # the pre-470 driver's MIG naming
    # Without the query, -L alone still splits GPUs that have instances.
    assert len(gpus.devices_from(_sample("list_mixed_mig.txt"))) == 6


def test_query_parser_reads_mig_mode() -> None:
    query = gpus.parse_query(_sample("query_mixed_mig.csv") + "garbage line\n")
    assert query["1"] == (GPU1, False) and query["0"][1] is True and len(query) == 4


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ["0:0", "0:1", "0:2", "1", "3:0"]),
        ({"CUDA_VISIBLE_DEVICES": "1"}, ["1"]),
        ({"CUDA_VISIBLE_DEVICES": GPU1}, ["1"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-0e2bd9a5"}, ["1"]),  # a UUID prefix, as CUDA allows
        ({"CUDA_VISIBLE_DEVICES": f"{MIG0},1"}, ["0:0", "1"]),
        ({"CUDA_VISIBLE_DEVICES": "0"}, ["0:0", "0:1", "0:2"]),  # a MIG GPU: its instances
        (
            {"CUDA_VISIBLE_DEVICES": "GPU-5c89852c-d268-c3f3-1b07-005d5ae1dc3f"},
            ["0:0", "0:1", "0:2"],
        ),
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, ["0:0", "0:1", "0:2", "1", "3:0"]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
        ({"NVIDIA_VISIBLE_DEVICES": "3:0,1", "CUDA_VISIBLE_DEVICES": "1"}, ["1"]),
    ],
)
def test_visible_devices_narrow_the_inventory(env: dict[str, str], expected: list[str]) -> None:
    uuids = {i: u for i, (u, _) in gpus.parse_query(_sample("query_mixed_mig.csv")).items()}
    assert [d.index for d in gpus.visible(_mixed(), env, uuids)] == expected


def test_gpu_ids_resolve_by_index_uuid_or_mig_id() -> None:
    got = gpus.resolve(["1", MIG0, "3:0"], _mixed(), ["0", "2", "3"])
    assert [d.id for d in got] == [GPU1, MIG0, OLD_MIG]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["0"], "GPU 0 has MIG enabled; name its MIG instances (0:0,0:1,0:2)"),
        (["2"], "GPU 2 has MIG enabled; name its MIG instances (none made)"),
        (["7"], "'7' is not a GPU of this machine"),
        (["GPU-ffff"], "is not a GPU of this machine"),
        (["1", GPU1], "names a GPU already listed"),
    ],
)
def test_gpu_ids_this_machine_lacks_are_refused(given: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gpus.resolve(given, _mixed(), ["0", "2", "3"])


def test_parse_ids_takes_indexes_uuids_and_mig_ids() -> None:
    assert gpus.parse_ids(f"0, 3:1,{GPU1},{OLD_MIG}") == ("0", "3:1", GPU1, OLD_MIG)
    for bad in ("x", "0,0", "GPU-zz", "-1"):
        with pytest.raises(ValidationError):
            gpus.parse_ids(bad)


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An nvidia-smi on PATH answering like the mixed MIG machine."""
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in -L) cat {SAMPLES / "list_mixed_mig.txt"} ;;\n'
        f"  --query-gpu=*) cat {SAMPLES / 'query_mixed_mig.csv'} ;;\n"
        "  *) exit 9 ;; esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


async def test_detect_asks_nvidia_smi_and_honours_cuda_visible_devices(fake_smi: None) -> None:
    inv = await gpus.detect(None, {"CUDA_VISIBLE_DEVICES": f"{GPU1},{MIG0}"})
    assert inv.ids == (MIG0, GPU1) and inv.source == "nvidia-smi" and not inv.simulated
    assert inv.labels(inv.ids) == "0:0,1"
    assert inv.device(GPU1).gpu == "1" and inv.device(MIG0).gpu == "0"
    named = await gpus.detect(("1", "0:2"), {})
    assert named.ids == (GPU1, "MIG-1d4ea4b2-a5fa-5bd4-a2f8-7ed35d2a8a5e")
    with pytest.raises(ValidationError, match="not a GPU of this machine"):
        await gpus.detect(("5",), {})


async def test_detect_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    assert (await gpus.detect(None, {})).ids == ()
    from_env = await gpus.detect(None, {"CUDA_VISIBLE_DEVICES": f"{GPU1},2"})
    assert from_env.ids == (GPU1, "2") and from_env.source == "CUDA_VISIBLE_DEVICES"
    assert (await gpus.detect(("0", GPU1), {})).ids == ("0", GPU1)  # nothing to check against
    simulated = await gpus.detect(None, {gpus.SIMULATED_ENV: "0,1"})
    assert simulated.ids == ("0", "1") and simulated.simulated
    assert simulated.labels(simulated.ids) == "0,1" and simulated.device("1").gpu == "1"
