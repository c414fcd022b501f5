"""Job mode resolution: the original's truth table plus ``default_mode``."""

from __future__ import annotations

import pytest

from caliban.core.jobmode import resolve_mode
from caliban.errors import EXIT_USAGE, ValidationError
from caliban.spec import JobMode

GPU_SPEC = "1xT4"
TPU_SPEC = "8xV3"


@pytest.mark.parametrize(
    ("use_gpu", "gpu", "tpu", "mode"),
    [
        (False, None, None, JobMode.CPU),
        (False, None, TPU_SPEC, JobMode.CPU),
        (True, None, None, JobMode.GPU),
        (True, GPU_SPEC, None, JobMode.GPU),
        (True, GPU_SPEC, TPU_SPEC, JobMode.GPU),
        (True, None, TPU_SPEC, JobMode.CPU),
    ],
)
def test_truth_table(use_gpu: bool, gpu: str | None, tpu: str | None, mode: JobMode) -> None:
    assert resolve_mode(use_gpu, gpu, tpu) is mode


@pytest.mark.parametrize("tpu", [None, TPU_SPEC])
def test_nogpu_with_a_gpu_spec_is_an_error(tpu: str | None) -> None:
    with pytest.raises(ValidationError, match="--nogpu cannot be combined with --gpu_spec") as info:
        resolve_mode(False, GPU_SPEC, tpu)
    assert info.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    ("default", "gpu", "tpu", "mode"),
    [
        (None, None, None, JobMode.GPU),
        (JobMode.CPU, None, None, JobMode.CPU),
        (JobMode.GPU, None, None, JobMode.GPU),
        (JobMode.CPU, GPU_SPEC, None, JobMode.GPU),
        (JobMode.GPU, None, TPU_SPEC, JobMode.CPU),
    ],
)
def test_default_mode_applies_only_when_nothing_decides(
    default: JobMode | None, gpu: str | None, tpu: str | None, mode: JobMode
) -> None:
    assert resolve_mode(None, gpu, tpu, default=default) is mode


def test_explicit_flags_beat_the_default() -> None:
    assert resolve_mode(False, None, None, default=JobMode.GPU) is JobMode.CPU
    assert resolve_mode(True, None, None, default=JobMode.CPU) is JobMode.GPU
