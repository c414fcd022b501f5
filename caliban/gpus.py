"""Which GPUs this machine has, and which of them caliban may hand out.

Detection order: ``--gpu_ids`` given by the user; ``CALIBAN_SIMULATED_GPUS``
(ids that exist only on paper: containers get the environment of those GPUs but
no device request, which is how tests and benchmarks exercise GPU scheduling
on machines without GPUs); otherwise ``nvidia-smi``, narrowed to
``CUDA_VISIBLE_DEVICES`` when the caller set it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio

from caliban.errors import ValidationError

SIMULATED_ENV = "CALIBAN_SIMULATED_GPUS"


@dataclass(frozen=True)
class GpuInventory:
    ids: tuple[str, ...]
    simulated: bool = False
    source: str = "none"


def parse_ids(text: str, what: str = "--gpu_ids") -> tuple[str, ...]:
    ids = tuple(p.strip() for p in text.split(",") if p.strip())
    for gpu in ids:
        if not re.fullmatch(r"[0-9]+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+", gpu):
            raise ValidationError(f"{what}: {gpu!r} is not a GPU index or UUID")
    if len(set(ids)) != len(ids):
        raise ValidationError(f"{what}: GPU ids repeat in {text!r}")
    return ids


async def _nvidia_smi() -> tuple[str, ...]:
    try:
        with anyio.fail_after(20):
            result = await anyio.run_process(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], check=False
            )
    except (OSError, TimeoutError):
        return ()
    if result.returncode != 0:
        return ()
    return tuple(line.strip() for line in result.stdout.decode().splitlines() if line.strip())


async def detect(
    given: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> GpuInventory:
    env = os.environ if environ is None else environ
    simulated = env.get(SIMULATED_ENV, "").strip()
    if given:
        return GpuInventory(tuple(given), simulated=bool(simulated), source="--gpu_ids")
    if simulated:
        return GpuInventory(
            parse_ids(simulated, SIMULATED_ENV), simulated=True, source=SIMULATED_ENV
        )
    found = await _nvidia_smi()
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and found:
        allowed = [v.strip() for v in visible.split(",") if v.strip()]
        found = tuple(g for g in found if g in allowed)
    return GpuInventory(found, source="nvidia-smi" if found else "none")


def gpu_env(ids: Sequence[str]) -> list[str]:
    """Environment a job holding ``ids`` sees.

    Inside the container the runtime exposes only the held GPUs, renumbered
    from 0, so CUDA_VISIBLE_DEVICES lists container ordinals while
    NVIDIA_VISIBLE_DEVICES and CALIBAN_GPU_IDS name the host's GPUs.
    """
    return [
        f"CALIBAN_GPU_IDS={','.join(ids)}",
        f"NVIDIA_VISIBLE_DEVICES={','.join(ids)}",
        f"CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(len(ids)))}",
    ]


def device_requests(ids: Sequence[str]) -> list[dict[str, object]]:
    # DeviceIDs and Count are mutually exclusive in the Engine API.
    return [{"Driver": "nvidia", "DeviceIDs": list(ids), "Capabilities": [["gpu"]]}]
