"""Which image a project's image starts FROM.

Precedence, most specific invocation first: ``CALIBAN_BASE_IMAGE`` in the
environment (one run, one shell session, CI), then ``base_image`` of the
project's .calibanconfig.json, then that of the user file, then the defaults
below (the commands resolve it through :mod:`caliban.core.settings`; ``resolve``
is the same without the user file). A ``{}`` in any value is replaced by the
mode (``cpu``/``gpu``), as the original allowed.
"""

from __future__ import annotations

from collections.abc import Mapping

from caliban.spec import JobMode

ENV_VAR = "CALIBAN_BASE_IMAGE"

DEFAULTS: dict[JobMode, str] = {
    JobMode.CPU: "python:3.11-slim",
    # CUDA + cuDNN runtime libraries; the generated Dockerfile adds Python,
    # which the CUDA images do not ship. Ubuntu 22.04's pip is not
    # "externally managed", so requirements install system-wide as usual.
    JobMode.GPU: "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
}


def resolve(mode: JobMode, configured: str | None, environ: Mapping[str, str]) -> str:
    chosen = environ.get(ENV_VAR, "").strip() or configured or DEFAULTS[mode]
    return chosen.replace("{}", mode.value)
