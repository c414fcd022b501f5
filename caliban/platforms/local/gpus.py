"""Which GPUs this machine has, and which of them caliban may hand out.

Detection order: ``--gpu_ids`` given by the user; ``CALIBAN_SIMULATED_GPUS``
(ids that exist only on paper: containers get the environment of those GPUs but
no device request, which is how tests and benchmarks exercise GPU scheduling
on machines without GPUs); otherwise ``nvidia-smi``, narrowed to
``CUDA_VISIBLE_DEVICES``/``NVIDIA_VISIBLE_DEVICES`` when the caller set them.

The unit handed out is what the driver schedules: a whole GPU, named by its
``GPU-`` UUID, or a MIG instance (``MIG-...``); a GPU with MIG enabled is never
handed out itself. Indexes (``0``, or ``0:1`` for MIG device 1 of GPU 0) are
kept for display and for ``--gpu_ids``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from caliban.errors import ValidationError

SIMULATED_ENV = "CALIBAN_SIMULATED_GPUS"
_ID = r"[0-9]+(?::[0-9]+)?|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+"


@dataclass(frozen=True)
class GpuDevice:
    id: str  # what NVIDIA_VISIBLE_DEVICES and the device request name
    index: str  # "3", or "3:1" for a MIG instance
    gpu: str  # the physical GPU's index, which `nvidia-smi topo -m` rows use


@dataclass(frozen=True)
class GpuInventory:
    ids: tuple[str, ...]
    simulated: bool = False
    source: str = "none"
    devices: tuple[GpuDevice, ...] = field(default=(), compare=False)

    def device(self, gpu_id: str) -> GpuDevice:
        for d in self.devices:
            if d.id == gpu_id:
                return d
        # Simulated or user-named ids without nvidia-smi: the id is the index.
        return GpuDevice(gpu_id, gpu_id, gpu_id.split(":")[0])

    def labels(self, ids: Sequence[str]) -> str:
        return ",".join(self.device(i).index for i in ids)


def parse_ids(text: str, what: str = "--gpu_ids") -> tuple[str, ...]:
    ids = tuple(p.strip() for p in text.split(",") if p.strip())
    for gpu in ids:
        if not re.fullmatch(_ID, gpu):
            raise ValidationError(f"{what}: {gpu!r} is not a GPU index or UUID")
    if len(set(ids)) != len(ids):
        raise ValidationError(f"{what}: GPU ids repeat in {text!r}")
    return ids


# -- pure parsers of nvidia-smi output ------------------------------------------------

_L_GPU = re.compile(r"GPU (\d+): .*\(UUID: (GPU-[0-9a-fA-F-]+)\)")
# "MIG 3g.20gb Device 0: (UUID: MIG-<uuid>)" since driver 470; older drivers
# printed "MIG-GPU-<uuid>/<gi>/<ci>".
_L_MIG = re.compile(r"\s+MIG .*Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)")


def parse_query(text: str) -> dict[str, tuple[str, bool]]:
    """``--query-gpu=index,uuid,mig.mode.current --format=csv,noheader`` ->
    index -> (uuid, MIG enabled)."""
    out: dict[str, tuple[str, bool]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        mig = len(cells) > 2 and cells[2].lower() == "enabled"
        out[cells[0]] = (cells[1], mig)
    return out


def parse_listing(text: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``nvidia-smi -L`` -> [(index, uuid, [(mig device index, MIG id), ...])]."""
    gpus: list[tuple[str, str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        m = _L_GPU.match(line)
        if m:
            gpus.append((m.group(1), m.group(2), []))
            continue
        m = _L_MIG.match(line)
        if m and gpus:
            gpus[-1][2].append((m.group(1), m.group(2)))
    return gpus


def devices_from(listing: str, query: str = "") -> tuple[GpuDevice, ...]:
    """The schedulable units: MIG instances of MIG GPUs, whole GPUs otherwise.

    ``query`` tells which GPUs have MIG on; one with MIG on and no instance
    made yet offers nothing (``-L`` alone would list it as a plain GPU).
    """
    mig_on = {index for index, (_, on) in parse_query(query).items() if on}
    out: list[GpuDevice] = []
    for index, uuid, migs in parse_listing(listing):
        if migs:
            out.extend(GpuDevice(mig, f"{index}:{dev}", index) for dev, mig in migs)
        elif index not in mig_on:
            out.append(GpuDevice(uuid, index, index))
    return tuple(out)


def _matches(device: GpuDevice, name: str, parent_uuid: str | None = None) -> bool:
    if name in (device.index, device.id):
        return True
    # CUDA takes any unique prefix of a UUID.
    if name.startswith(("GPU-", "MIG-")) and len(name) > 4 and device.id.startswith(name):
        return True
    # Naming a MIG GPU (``parent_uuid`` given) allows all of its instances.
    if parent_uuid is None:
        return False
    return name == device.gpu or (name.startswith("GPU-") and parent_uuid.startswith(name))


def _parent(device: GpuDevice, uuids: Mapping[str, str] | None) -> str | None:
    if not device.id.startswith("MIG-"):
        return None
    return (uuids or {}).get(device.gpu, "")


def visible(
    devices: Sequence[GpuDevice], env: Mapping[str, str], uuids: Mapping[str, str] | None = None
) -> tuple[GpuDevice, ...]:
    """Narrow to what CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES allow.

    Indexes are compared with nvidia-smi's (PCI bus) order. ``uuids``: GPU
    index -> UUID, so naming a MIG GPU's UUID allows all its instances.
    """
    out = tuple(devices)
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = env.get(var)
        if value is None or value.strip().lower() == "all":
            continue
        names = [v.strip() for v in value.split(",") if v.strip()]
        names = [n for n in names if n.lower() not in ("none", "void")]
        out = tuple(d for d in out if any(_matches(d, n, _parent(d, uuids)) for n in names))
    return out


def resolve(
    given: Sequence[str], devices: Sequence[GpuDevice], mig_gpus: Sequence[str] = ()
) -> tuple[GpuDevice, ...]:
    """``--gpu_ids`` names (indexes or UUIDs) -> this machine's devices."""
    out: list[GpuDevice] = []
    for name in given:
        if name in mig_gpus:
            raise ValidationError(
                f"--gpu_ids: GPU {name} has MIG enabled; name its MIG instances "
                f"({','.join(d.index for d in devices if d.gpu == name) or 'none made'})"
            )
        hit = [d for d in devices if _matches(d, name)]
        if len(hit) != 1:
            known = ",".join(d.index for d in devices)
            raise ValidationError(f"--gpu_ids: {name!r} is not a GPU of this machine ({known})")
        if hit[0] in out:
            raise ValidationError(f"--gpu_ids: {name!r} names a GPU already listed")
        out.append(hit[0])
    return tuple(out)


# -- the machine ----------------------------------------------------------------------


async def _smi(*args: str) -> str:
    try:
        with anyio.fail_after(20):
            result = await anyio.run_process(["nvidia-smi", *args], check=False)
    except (OSError, TimeoutError):
        return ""
    return result.stdout.decode(errors="replace") if result.returncode == 0 else ""


async def _nvidia_smi() -> tuple[tuple[GpuDevice, ...], str]:
    listing = await _smi("-L")
    if not listing:
        return (), ""
    query = await _smi("--query-gpu=index,uuid,mig.mode.current", "--format=csv,noheader")
    return devices_from(listing, query), query


def _from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """Explicit ids in CUDA_/NVIDIA_VISIBLE_DEVICES, when nvidia-smi cannot tell."""
    for var in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = env.get(var, "")
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        if names and all(re.fullmatch(_ID, n) for n in names):
            return names
    return ()


async def detect(
    given: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> GpuInventory:
    env = os.environ if environ is None else environ
    simulated = env.get(SIMULATED_ENV, "").strip()
    if simulated:
        ids = tuple(given) if given else parse_ids(simulated, SIMULATED_ENV)
        return GpuInventory(ids, simulated=True, source="--gpu_ids" if given else SIMULATED_ENV)
    devices, query = await _nvidia_smi()
    if given:
        if not devices:  # no nvidia-smi to check them against: the user knows best
            return GpuInventory(tuple(given), source="--gpu_ids")
        mig_gpus = [i for i, (_, on) in parse_query(query).items() if on]
        chosen = resolve(given, devices, mig_gpus)
        return GpuInventory(tuple(d.id for d in chosen), source="--gpu_ids", devices=chosen)
    if devices:
        uuids = {i: u for i, (u, _) in parse_query(query).items()}
        found = visible(devices, env, uuids)
        return GpuInventory(
            tuple(d.id for d in found), source="nvidia-smi" if found else "none", devices=found
        )
    named = _from_env(env)
    return GpuInventory(named, source="CUDA_VISIBLE_DEVICES" if named else "none")


def gpu_env(ids: Sequence[str]) -> list[str]:
    """Environment a job holding ``ids`` sees.

    Inside the container the runtime exposes only the held GPUs, renumbered
    from 0, so CUDA_VISIBLE_DEVICES lists container ordinals while
    NVIDIA_VISIBLE_DEVICES and CALIBAN_GPU_IDS name the host's GPUs (by UUID or
    MIG id when nvidia-smi told them).
    """
    return [
        f"CALIBAN_GPU_IDS={','.join(ids)}",
        f"NVIDIA_VISIBLE_DEVICES={','.join(ids)}",
        f"CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(len(ids)))}",
    ]


def device_requests(ids: Sequence[str]) -> list[dict[str, object]]:
    # DeviceIDs and Count are mutually exclusive in the Engine API.
    return [{"Driver": "nvidia", "DeviceIDs": list(ids), "Capabilities": [["gpu"]]}]
