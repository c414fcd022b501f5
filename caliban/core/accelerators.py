"""Accelerator specs (``NxTYPE``), machine types and regions for Vertex AI.

The tables live in ``caliban/data/vertex_catalog.json``, versioned and dated,
because Google's catalogue changes faster than this code: updating them is a
data change. Every check made from them can be skipped with ``--force``.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar, cast

from caliban.errors import ValidationError
from caliban.spec import JobMode

CPU_MACHINE_TYPE = "n1-highcpu-32"
"""The default machine of a CPU job, as in the original."""

_SPEC_RE = re.compile(r"\s*([0-9]+)\s*[xX]\s*([A-Za-z0-9_-]+)\s*")
_MACHINE_ALIASES = {"cloud_tpu": "cloud-tpu"}  # the original's spelling
T = TypeVar("T")


@dataclass(frozen=True)
class GpuType:
    name: str
    vertex: str
    gke: str
    end_of_life: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TpuType:
    """``vertex`` is None for a TPU the Vertex enum has no value for (requested by
    machine type and topology alone). ``topologies`` maps the chips of one host to
    the slice topology Vertex and GKE are told; empty for the legacy TPU nodes."""

    name: str
    vertex: str | None
    aliases: tuple[str, ...] = ()
    gke_accelerator: str | None = None
    topologies: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MachineType:
    name: str
    cpus: int
    accelerators: Mapping[str, tuple[int, ...]]
    accelerator_required: bool = False


@dataclass(frozen=True)
class Catalog:
    """The parsed data file."""

    version: int
    as_of: str
    gpus: Mapping[str, GpuType]
    tpus: Mapping[str, TpuType]
    machines: Mapping[str, MachineType]
    regions: Mapping[str, frozenset[str]]

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Catalog:
        """Build a catalog from the JSON data, checking shapes and cross references."""
        gpus = {
            name: GpuType(
                name=name,
                vertex=_get(v, "vertex", str),
                gke=_get(v, "gke", str),
                end_of_life=_get(v, "end_of_life", bool, False),
                aliases=_strings(_get(v, "aliases", list, [])),
            )
            for name, v in _section(data, "gpus").items()
        }
        tpus = {}
        for name, v in _section(data, "tpus").items():
            topologies = _get(v, "topologies", dict, {})
            tpus[name] = TpuType(
                name=name,
                vertex=_get(v, "vertex", str),
                aliases=_strings(_get(v, "aliases", list, [])),
                gke_accelerator=_get(v, "gke", str, None),
                topologies={int(k): str(t) for k, t in topologies.items()},
            )
        machines = {}
        for name, v in _section(data, "machine_types").items():
            offered = _get(v, "accelerators", dict, {})
            machines[name] = MachineType(
                name=name,
                cpus=_get(v, "cpus", int),
                accelerators={str(a): tuple(sorted(_ints(c))) for a, c in offered.items()},
                accelerator_required=_get(v, "accelerator_required", bool, False),
            )
        regions = {name: frozenset(_strings(v)) for name, v in _section(data, "regions").items()}
        known = gpus.keys() | tpus.keys()
        for machine in machines.values():
            if unknown := machine.accelerators.keys() - known:
                raise ValueError(f"catalog: {machine.name} names unknown {sorted(unknown)}")
        for region, offered_here in regions.items():
            if missing := offered_here - known:
                raise ValueError(f"catalog: {region} names unknown {sorted(missing)}")
        version, as_of = _get(data, "version", int), _get(data, "as_of", str)
        return cls(version, as_of, gpus, tpus, machines, regions)

    def machines_for(self, accelerator: str, count: int) -> list[str]:
        """Machine types that take ``count`` of ``accelerator``, sorted."""
        return sorted(
            m.name for m in self.machines.values() if count in m.accelerators.get(accelerator, ())
        )

    def counts_for(self, accelerator: str) -> list[int]:
        """Every count of ``accelerator`` some machine type takes."""
        counts = {c for m in self.machines.values() for c in m.accelerators.get(accelerator, ())}
        return sorted(counts)

    def regions_for(self, accelerator: str) -> list[str]:
        """Regions that offer ``accelerator``, sorted."""
        return sorted(r for r, offered in self.regions.items() if accelerator in offered)


_MISSING = object()


def _get(data: Mapping[str, Any], key: str, kind: type[T], default: Any = _MISSING) -> T:
    # The data file is ours, but a bad edit should fail loudly and say where.
    value = data.get(key, default)
    if value is _MISSING:
        raise ValueError(f"catalog: missing {key!r}")
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"catalog: {key!r} should be a {kind.__name__}, not {value!r}")
    return cast("T", value)


def _strings(values: object) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"catalog: expected a list of strings, not {values!r}")
    return tuple(values)


def _ints(values: object) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise ValueError(f"catalog: expected a list of counts, not {values!r}")
    return tuple(values)


def _section(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = _get(data, key, dict)
    for name, entry in value.items():
        if not isinstance(entry, dict | list):
            raise ValueError(f"catalog: {key}.{name} has the wrong shape")
    return value


@functools.cache
def catalog() -> Catalog:
    """The catalog shipped with caliban, read once."""
    text = resources.files("caliban").joinpath("data/vertex_catalog.json").read_text("utf-8")
    return Catalog.from_mapping(json.loads(text))


GPU_TYPES: tuple[str, ...] = tuple(catalog().gpus)
TPU_TYPES: tuple[str, ...] = tuple(catalog().tpus)
MACHINE_TYPES: tuple[str, ...] = tuple(sorted(catalog().machines))
REGIONS: tuple[str, ...] = tuple(sorted(catalog().regions))


@dataclass(frozen=True)
class AcceleratorSpec:
    """``count`` accelerators of ``type`` (a catalog short name: ``T4``, ``V2``)."""

    count: int
    type: str

    @property
    def is_tpu(self) -> bool:
        return self.type in catalog().tpus

    @property
    def vertex_type(self) -> str | None:
        """The Vertex ``acceleratorType`` enum name, e.g. ``NVIDIA_TESLA_T4``; None for
        a TPU the enum has no value for."""
        cat = catalog()
        info = cat.tpus[self.type] if self.is_tpu else cat.gpus[self.type]
        return info.vertex

    def __str__(self) -> str:
        return f"{self.count}x{self.type}"


DEFAULT_GPU = AcceleratorSpec(1, "T4")
"""GPU mode without ``--gpu_spec``. The original used 1xP100, which Google is retiring."""


def _lookup(name: str, types: Iterable[GpuType | TpuType]) -> str | None:
    wanted = name.upper().replace("-", "_")
    for t in types:
        spellings = [s for s in (t.name, t.vertex, *t.aliases) if s]
        if wanted in (s.upper().replace("-", "_") for s in spellings):
            return t.name
        if isinstance(t, GpuType) and wanted == t.gke.upper().replace("-", "_"):
            return t.name
    return None


def _suggest(word: str, choices: Iterable[str]) -> str:
    options = sorted(choices)
    close = difflib.get_close_matches(word.upper(), options, n=3, cutoff=0.5)
    did_you_mean = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{did_you_mean}try one of {', '.join(options)}"


def _parse(text: str, flag: str, tpu: bool, check_count: bool) -> AcceleratorSpec:
    match = _SPEC_RE.fullmatch(text)
    example = "8xV3" if tpu else "1xT4"
    if match is None:
        raise ValidationError(f"{flag} {text!r} is not of the form NxTYPE, for example {example}")
    count, raw_type = int(match.group(1)), match.group(2)
    cat = catalog()
    mine, other = (cat.tpus, cat.gpus) if tpu else (cat.gpus, cat.tpus)
    name = _lookup(raw_type, mine.values())
    if name is None:
        kind, other_kind = ("TPU", "GPU") if tpu else ("GPU", "TPU")
        if _lookup(raw_type, other.values()) is not None:
            right = f"--{other_kind.lower()}_spec"
            raise ValidationError(f"{flag} {text!r}: {raw_type} is a {other_kind}: use {right}")
        raise ValidationError(
            f"{flag} {text!r}: unknown {kind} type {raw_type!r}; {_suggest(raw_type, mine)}"
        )
    if count < 1:
        raise ValidationError(f"{flag} {text!r}: the count must be at least 1")
    counts = cat.counts_for(name)
    if check_count and count not in counts:
        allowed = ", ".join(map(str, counts)) or "none"
        raise ValidationError(
            f"{flag} {text!r}: {name} is available in counts {allowed}",
            hint="--force skips this check",
        )
    return AcceleratorSpec(count, name)


def parse_gpu_spec(text: str, *, check_count: bool = True) -> AcceleratorSpec:
    """Parse ``--gpu_spec NxTYPE``; the type is case-insensitive.

    Besides the short names (``T4``, ``A100_80GB``) the Vertex enum names and
    GKE labels are accepted. ``check_count`` checks the count against every
    machine type; pass False under ``--force``.
    """
    return _parse(text, "--gpu_spec", tpu=False, check_count=check_count)


def parse_tpu_spec(text: str, *, check_count: bool = True) -> AcceleratorSpec:
    """Parse ``--tpu_spec NxTYPE`` (``8xV3``, ``4xV5E``)."""
    return _parse(text, "--tpu_spec", tpu=True, check_count=check_count)


def normalize_machine_type(name: str) -> str:
    """Lowercase, and the original's ``cloud_tpu`` spelled as Vertex wants it."""
    lowered = name.strip().lower()
    return _MACHINE_ALIASES.get(lowered, lowered)


def validate_vertex(
    *,
    machine_type: str,
    gpu: AcceleratorSpec | None,
    tpu: AcceleratorSpec | None,
    region: str,
    force: bool = False,
) -> None:
    """Check that Vertex can run this combination, or raise ValidationError.

    The message lists what would work (sorted). A no-op with ``force``.
    """
    if force:
        return
    cat = catalog()
    hint = "--force skips this check"
    if region not in cat.regions:
        raise ValidationError(
            f"unknown region {region!r}; {_suggest_lower(region, cat.regions)}", hint=hint
        )
    machine_name = normalize_machine_type(machine_type)
    machine = cat.machines.get(machine_name)
    if machine is None:
        raise ValidationError(
            f"unknown machine type {machine_type!r}; {_suggest_lower(machine_type, cat.machines)}",
            hint=hint,
        )
    for spec in (gpu, tpu):
        if spec is None:
            continue
        if not spec.is_tpu and cat.gpus[spec.type].end_of_life:
            usable = sorted(g.name for g in cat.gpus.values() if not g.end_of_life)
            raise ValidationError(
                f"{spec.type} GPUs are end-of-life on Vertex AI; try one of {', '.join(usable)}",
                hint=hint,
            )
        if spec.type not in cat.regions[region]:
            regions = cat.regions_for(spec.type)
            raise ValidationError(
                f"{spec.type} is not offered in {region}; try one of {', '.join(regions)}",
                hint=hint,
            )
    hosts_tpu = any(a in cat.tpus for a in machine.accelerators)
    hosted = tpu if hosts_tpu else gpu
    if hosts_tpu and gpu is not None:
        raise ValidationError(
            f"machine type {machine_name} hosts TPUs and cannot also take {gpu}", hint=hint
        )
    if hosted is None:
        if machine.accelerator_required:
            needs = " or ".join(f"{c}x{a}" for a, cs in machine.accelerators.items() for c in cs)
            flag = "--tpu_spec" if hosts_tpu else "--gpu_spec"
            raise ValidationError(
                f"machine type {machine_name} comes with accelerators: pass {flag} {needs}",
                hint=hint,
            )
    elif hosted.count not in machine.accelerators.get(hosted.type, ()):
        fits = cat.machines_for(hosted.type, hosted.count)
        raise ValidationError(
            f"machine type {machine_name} cannot take {hosted}; "
            f"try one of {', '.join(fits) or '(none: change the count)'}",
            hint=hint,
        )
    if tpu is not None and not hosts_tpu and not cat.machines_for(tpu.type, tpu.count):
        counts = ", ".join(map(str, cat.counts_for(tpu.type)))
        raise ValidationError(f"{tpu.type} TPUs come in counts {counts}, not {tpu.count}")


def _suggest_lower(word: str, choices: Iterable[str]) -> str:
    options = sorted(choices)
    close = difflib.get_close_matches(word.strip().lower(), options, n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(close)}?"
    return f"try one of {', '.join(options)}"


def default_machine_type(
    mode: JobMode, gpu: AcceleratorSpec | None = None, tpu: AcceleratorSpec | None = None
) -> str:
    """The machine type used when ``--machine_type`` is not given.

    CPU jobs get ``n1-highcpu-32`` as in the original, or the TPU host for a
    TPU-only job. GPU jobs get the smallest machine with at least 8 vCPUs
    that takes the GPUs (a standard family on ties): ``n1-standard-8`` for
    1xT4 as before, ``a2-highgpu-1g`` for 1xA100, ``g2-standard-8`` for 1xL4.
    """
    cat = catalog()
    if mode is JobMode.CPU:
        if tpu is not None and gpu is None:
            hosts = cat.machines_for(tpu.type, tpu.count)
            if hosts:
                return hosts[0]
        return CPU_MACHINE_TYPE
    spec = gpu or DEFAULT_GPU
    fits = [cat.machines[name] for name in cat.machines_for(spec.type, spec.count)]
    if not fits:
        counts = ", ".join(map(str, cat.counts_for(spec.type)))
        raise ValidationError(f"no machine type takes {spec}; {spec.type} comes in counts {counts}")
    best = min(fits, key=lambda m: (m.cpus < 8, m.cpus, "standard" not in m.name, m.name))
    return best.name


def gke_accelerator_label(spec: AcceleratorSpec) -> str:
    """The ``cloud.google.com/gke-accelerator`` node label of a GPU type."""
    if spec.is_tpu:
        raise ValidationError(f"{spec} is a TPU: GKE selects TPUs with gke_tpu_selectors")
    return catalog().gpus[spec.type].gke


def gke_tpu_selectors(spec: AcceleratorSpec) -> dict[str, str]:
    """Node selectors that place a pod on a TPU slice of this shape."""
    info = catalog().tpus.get(spec.type)
    if info is None:
        raise ValidationError(f"{spec} is not a TPU")
    if info.gke_accelerator is None:
        usable = sorted(t.name for t in catalog().tpus.values() if t.gke_accelerator)
        raise ValidationError(
            f"{spec.type} TPUs only exist as legacy Cloud TPU nodes, which GKE no longer offers; "
            f"try one of {', '.join(usable)}"
        )
    topology = info.topologies.get(spec.count)
    if topology is None:
        counts = ", ".join(map(str, sorted(info.topologies)))
        raise ValidationError(f"{spec}: a single-host {spec.type} slice has {counts} chips")
    return {
        "cloud.google.com/gke-tpu-accelerator": info.gke_accelerator,
        "cloud.google.com/gke-tpu-topology": topology,
    }


def vertex_tpu_topology(machine_type: str, tpu: AcceleratorSpec | None) -> str | None:
    """The ``machineSpec.tpuTopology`` a Vertex job on ``machine_type`` needs, or None.

    TPU VMs (v4, v5e, v5p, v6e) need it; legacy ``cloud-tpu`` nodes, GPU and CPU
    machines do not. The chips are the machine type's when the catalog knows it
    (one host per replica), else the ``--tpu_spec`` count. Not skipped by
    ``--force``: Vertex refuses such a job without a topology, so an unknown shape
    is a ValidationError here, before anything is built or recorded.
    """
    cat = catalog()
    machine = cat.machines.get(normalize_machine_type(machine_type))
    hosted = [a for a in (machine.accelerators if machine else {}) if a in cat.tpus]
    if tpu is not None and not tpu.is_tpu:
        tpu = None
    name = tpu.type if tpu is not None else (hosted[0] if len(hosted) == 1 else None)
    if name is None:
        return None
    info = cat.tpus[name]
    if not info.topologies:
        return None
    counts = machine.accelerators.get(name, ()) if machine else ()
    chips = counts[0] if len(counts) == 1 else (tpu.count if tpu is not None else 0)
    topology = info.topologies.get(chips)
    if topology is None:
        known = ", ".join(map(str, sorted(info.topologies)))
        raise ValidationError(
            f"no known TPU topology for {chips}x{name} on {machine_type}: "
            f"a {name} host has {known} chips"
        )
    return topology
