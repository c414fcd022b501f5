"""Accelerator specs, the Vertex catalogue and machine/region validation."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caliban.core.accelerators import (
    CPU_MACHINE_TYPE,
    DEFAULT_GPU,
    GPU_TYPES,
    MACHINE_TYPES,
    REGIONS,
    TPU_TYPES,
    AcceleratorSpec,
    Catalog,
    catalog,
    default_machine_type,
    gke_accelerator_label,
    gke_tpu_selectors,
    normalize_machine_type,
    parse_gpu_spec,
    parse_tpu_spec,
    validate_vertex,
    vertex_tpu_topology,
)
from caliban.errors import ValidationError
from caliban.spec import JobMode


def test_catalog_is_versioned_and_consistent() -> None:
    raw = json.loads(
        resources.files("caliban").joinpath("data/vertex_catalog.json").read_text("utf-8")
    )
    assert isinstance(raw["version"], int) and raw["as_of"]
    cat = catalog()
    assert cat is catalog()  # read once
    assert Catalog.from_mapping(raw) == cat
    for name in GPU_TYPES + TPU_TYPES:
        assert cat.counts_for(name), f"{name} fits no machine type"
        assert cat.regions_for(name), f"{name} is offered nowhere"
    assert set(REGIONS) >= {"us-central1", "europe-west4", "asia-southeast1"}
    assert CPU_MACHINE_TYPE in MACHINE_TYPES


def test_catalog_rejects_unknown_accelerators() -> None:
    raw = json.loads(
        resources.files("caliban").joinpath("data/vertex_catalog.json").read_text("utf-8")
    )
    raw["regions"]["us-central1"].append("Z9")
    with pytest.raises(ValueError, match="Z9"):
        Catalog.from_mapping(raw)


@pytest.mark.parametrize(
    ("text", "count", "kind", "vertex"),
    [
        ("1xT4", 1, "T4", "NVIDIA_TESLA_T4"),
        ("8xV100", 8, "V100", "NVIDIA_TESLA_V100"),
        ("2xp100", 2, "P100", "NVIDIA_TESLA_P100"),
        ("1xK80", 1, "K80", "NVIDIA_TESLA_K80"),
        ("1xA100", 1, "A100", "NVIDIA_TESLA_A100"),
        ("4xA100_80GB", 4, "A100_80GB", "NVIDIA_A100_80GB"),
        ("1xa100-80gb", 1, "A100_80GB", "NVIDIA_A100_80GB"),
        ("8xH100", 8, "H100", "NVIDIA_H100_80GB"),
        ("1xL4", 1, "L4", "NVIDIA_L4"),
        (" 1 X nvidia_tesla_t4 ", 1, "T4", "NVIDIA_TESLA_T4"),
        ("1xnvidia-l4", 1, "L4", "NVIDIA_L4"),
    ],
)
def test_parse_gpu_spec(text: str, count: int, kind: str, vertex: str) -> None:
    spec = parse_gpu_spec(text)
    assert spec == AcceleratorSpec(count, kind)
    assert spec.vertex_type == vertex
    assert not spec.is_tpu
    assert str(spec) == f"{count}x{kind}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("T4", "not of the form NxTYPE"),
        ("1x", "not of the form NxTYPE"),
        ("xT4", "not of the form NxTYPE"),
        ("1.5xT4", "not of the form NxTYPE"),
        ("1xT5", "did you mean T4"),
        ("1xBANANA", "try one of A100, A100_80GB"),
        ("0xT4", "at least 1"),
        ("3xT4", "counts 1, 2, 4"),
        ("7xV100", "counts 1, 2, 4, 8"),
        ("1xH100", "counts 8"),
        ("8xV3", "V3 is a TPU: use --tpu_spec"),
    ],
)
def test_parse_gpu_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_gpu_spec(text)


def test_count_check_can_be_skipped() -> None:
    assert parse_gpu_spec("7xV100", check_count=False) == AcceleratorSpec(7, "V100")


@pytest.mark.parametrize(
    ("text", "spec", "vertex"),
    [
        ("8xV3", AcceleratorSpec(8, "V3"), "TPU_V3"),
        ("8xv2", AcceleratorSpec(8, "V2"), "TPU_V2"),
        ("4xV5E", AcceleratorSpec(4, "V5_LITEPOD"), "TPU_V5_LITEPOD"),
        ("4xV4", AcceleratorSpec(4, "V4_POD"), "TPU_V4_POD"),
    ],
)
def test_parse_tpu_spec(text: str, spec: AcceleratorSpec, vertex: str) -> None:
    parsed = parse_tpu_spec(text)
    assert parsed == spec and parsed.is_tpu and parsed.vertex_type == vertex


@pytest.mark.parametrize(
    ("text", "message"),
    [("4xV3", "counts 8"), ("1xT4", "T4 is a GPU: use --gpu_spec"), ("8xV9", "try one of V2")],
)
def test_parse_tpu_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_tpu_spec(text)


@given(st.integers(0, 40), st.sampled_from(GPU_TYPES))
def test_gpu_counts_follow_the_machine_table(count: int, kind: str) -> None:
    allowed = count in catalog().counts_for(kind)
    try:
        parse_gpu_spec(f"{count}x{kind}")
    except ValidationError:
        assert not allowed
    else:
        assert allowed


def test_wrong_machine_suggests_machines_sorted() -> None:
    with pytest.raises(ValidationError) as info:
        validate_vertex(
            machine_type="n1-standard-96",
            gpu=AcceleratorSpec(2, "V100"),
            tpu=None,
            region="us-central1",
        )
    assert info.value.message == (
        "machine type n1-standard-96 cannot take 2xV100; try one of n1-highcpu-16, "
        "n1-highmem-16, n1-highmem-2, n1-highmem-4, n1-highmem-8, n1-standard-16, "
        "n1-standard-4, n1-standard-8"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"region": "us-centrl1"}, "did you mean us-central1"),
        ({"machine_type": "n1-standrd-8"}, "did you mean n1-standard-8"),
        ({"gpu": AcceleratorSpec(1, "K80")}, "K80 GPUs are end-of-life"),
        (
            {"gpu": AcceleratorSpec(1, "V100"), "region": "us-west2"},
            "V100 is not offered in us-west2; try one of asia-east1, europe-west4",
        ),
        ({"machine_type": "a2-highgpu-1g", "gpu": None}, "pass --gpu_spec 1xA100"),
        ({"machine_type": "n1-standard-8", "gpu": AcceleratorSpec(1, "A100")}, "a2-highgpu-1g"),
        (
            {"machine_type": "cloud-tpu", "tpu": AcceleratorSpec(8, "V3")},
            "hosts TPUs and cannot also take 1xT4",
        ),
        (
            {
                "machine_type": "n1-standard-8",
                "tpu": AcceleratorSpec(8, "V3"),
                "region": "us-east1",
            },
            "V3 is not offered in us-east1",
        ),
    ],
)
def test_validate_vertex_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "machine_type": "n1-standard-8",
        "gpu": AcceleratorSpec(1, "T4"),
        "tpu": None,
        "region": "us-central1",
    }
    args.update(kwargs)
    with pytest.raises(ValidationError, match=message) as info:
        validate_vertex(**args)  # type: ignore[arg-type]
    assert "--force" in str(info.value) or "counts" in str(info.value)
    validate_vertex(**args, force=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("machine", "gpu", "tpu", "region"),
    [
        ("n1-standard-8", AcceleratorSpec(1, "T4"), None, "us-central1"),
        ("a2-highgpu-8g", AcceleratorSpec(8, "A100"), None, "us-central1"),
        ("a2-ultragpu-1g", AcceleratorSpec(1, "A100_80GB"), None, "us-central1"),
        ("a3-highgpu-8g", AcceleratorSpec(8, "H100"), None, "us-central1"),
        ("g2-standard-48", AcceleratorSpec(4, "L4"), None, "europe-west4"),
        ("cloud_tpu", None, AcceleratorSpec(8, "V2"), "us-central1"),
        ("ct5lp-hightpu-4t", None, AcceleratorSpec(4, "V5_LITEPOD"), "us-central1"),
        ("n1-highcpu-32", None, None, "asia-east1"),
    ],
)
def test_validate_vertex_accepts(
    machine: str, gpu: AcceleratorSpec | None, tpu: AcceleratorSpec | None, region: str
) -> None:
    validate_vertex(machine_type=machine, gpu=gpu, tpu=tpu, region=region)


@pytest.mark.parametrize(
    ("mode", "gpu", "tpu", "machine"),
    [
        (JobMode.CPU, None, None, "n1-highcpu-32"),
        (JobMode.GPU, None, None, "n1-standard-8"),
        (JobMode.GPU, AcceleratorSpec(1, "T4"), None, "n1-standard-8"),
        (JobMode.GPU, AcceleratorSpec(4, "T4"), None, "n1-standard-8"),
        (JobMode.GPU, AcceleratorSpec(8, "V100"), None, "n1-standard-8"),
        (JobMode.GPU, AcceleratorSpec(1, "A100"), None, "a2-highgpu-1g"),
        (JobMode.GPU, AcceleratorSpec(2, "A100_80GB"), None, "a2-ultragpu-2g"),
        (JobMode.GPU, AcceleratorSpec(1, "L4"), None, "g2-standard-8"),
        (JobMode.GPU, AcceleratorSpec(8, "H100"), None, "a3-highgpu-8g"),
        (JobMode.CPU, None, AcceleratorSpec(8, "V3"), "cloud-tpu"),
        (JobMode.CPU, None, AcceleratorSpec(8, "V5_LITEPOD"), "ct5lp-hightpu-8t"),
    ],
)
def test_default_machine_type(
    mode: JobMode, gpu: AcceleratorSpec | None, tpu: AcceleratorSpec | None, machine: str
) -> None:
    assert default_machine_type(mode, gpu, tpu) == machine


@given(st.sampled_from(GPU_TYPES), st.sampled_from([1, 2, 4, 8, 16]))
def test_default_machine_always_validates(kind: str, count: int) -> None:
    spec = AcceleratorSpec(count, kind)
    if not catalog().machines_for(kind, count):
        with pytest.raises(ValidationError, match="no machine type takes"):
            default_machine_type(JobMode.GPU, spec)
        return
    machine = default_machine_type(JobMode.GPU, spec)
    region = catalog().regions_for(kind)[0]
    validate_vertex(
        machine_type=machine,
        gpu=spec,
        tpu=None,
        region=region,
        force=catalog().gpus[kind].end_of_life,
    )
    assert count in catalog().machines[machine].accelerators[kind]


def test_default_gpu_is_one_t4() -> None:
    assert AcceleratorSpec(1, "T4") == DEFAULT_GPU


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        (AcceleratorSpec(1, "T4"), "nvidia-tesla-t4"),
        (AcceleratorSpec(1, "L4"), "nvidia-l4"),
        (AcceleratorSpec(1, "A100_80GB"), "nvidia-a100-80gb"),
        (AcceleratorSpec(8, "H100"), "nvidia-h100-80gb"),
        (AcceleratorSpec(1, "P100"), "nvidia-tesla-p100"),
    ],
)
def test_gke_accelerator_label(spec: AcceleratorSpec, label: str) -> None:
    assert gke_accelerator_label(spec) == label


def test_gke_tpus() -> None:
    assert gke_tpu_selectors(AcceleratorSpec(8, "V5_LITEPOD")) == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x4",
    }
    with pytest.raises(ValidationError, match="legacy Cloud TPU"):
        gke_tpu_selectors(AcceleratorSpec(8, "V3"))
    with pytest.raises(ValidationError, match="is a TPU"):
        gke_accelerator_label(AcceleratorSpec(8, "V3"))
    with pytest.raises(ValidationError, match="is not a TPU"):
        gke_tpu_selectors(AcceleratorSpec(1, "T4"))


def test_normalize_machine_type() -> None:
    assert normalize_machine_type("cloud_tpu") == "cloud-tpu"
    assert normalize_machine_type(" N1-Standard-8 ") == "n1-standard-8"


def test_every_tpu_vm_machine_type_has_a_topology_for_its_chips() -> None:
    cat = catalog()
    seen = set()
    for machine in cat.machines.values():
        for name, counts in machine.accelerators.items():
            if name not in cat.tpus:
                continue
            for count in counts:
                topology = vertex_tpu_topology(machine.name, AcceleratorSpec(count, name))
                if cat.tpus[name].topologies:
                    assert topology == cat.tpus[name].topologies[count]
                    seen.add(name)
                else:
                    assert topology is None and machine.name == "cloud-tpu"
    assert seen == {"V4_POD", "V5_LITEPOD", "V5P", "V6E"}
    assert vertex_tpu_topology("n1-standard-8", AcceleratorSpec(1, "T4")) is None
    assert vertex_tpu_topology("n1-highcpu-32", None) is None
    # The machine alone names the TPU (under --force, without --tpu_spec).
    assert vertex_tpu_topology("ct6e-standard-4t", None) == "2x2"


def test_v6e_is_in_the_catalogue_with_regions_and_gke_slices() -> None:
    spec = parse_tpu_spec("4xV6E")
    assert spec == AcceleratorSpec(4, "V6E") and parse_tpu_spec("8xtrillium").type == "V6E"
    assert spec.vertex_type is None
    assert "europe-west4" in catalog().regions_for("V6E")
    validate_vertex(machine_type="ct6e-standard-4t", gpu=None, tpu=spec, region="us-east5")
    assert gke_tpu_selectors(spec) == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
