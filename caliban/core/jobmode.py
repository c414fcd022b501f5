"""Which job mode (CPU or GPU) a command runs in, from its flags.

GPU is the default, as in the original tool. A TPU spec without a GPU spec
means a CPU host driving TPUs; ``--nogpu`` together with a GPU spec is a
contradiction and is refused. ``default_mode`` from ``.calibanconfig.json``
replaces the built-in default when neither ``--nogpu`` nor a spec decides.
"""

from __future__ import annotations

from caliban.errors import ValidationError
from caliban.spec import JobMode


def resolve_mode(
    use_gpu: bool | None,
    gpu_spec: object | None,
    tpu_spec: object | None,
    *,
    default: JobMode | None = None,
) -> JobMode:
    """Resolve the job mode.

    ``use_gpu`` is False for ``--nogpu``, True when GPU mode was asked for,
    and None when the user said nothing (then ``default``, else GPU, applies
    unless a spec decides). With ``use_gpu`` True or False this is exactly
    the original's truth table.
    """
    if use_gpu is False:
        if gpu_spec is not None:
            raise ValidationError(
                "--nogpu cannot be combined with --gpu_spec",
                hint="drop --nogpu to run on GPUs, or drop --gpu_spec to run on CPUs",
            )
        return JobMode.CPU
    if gpu_spec is not None:
        return JobMode.GPU
    if tpu_spec is not None:
        return JobMode.CPU
    if use_gpu is None and default is not None:
        return default
    return JobMode.GPU
