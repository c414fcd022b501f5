"""What the library API is asked to do: plain, immutable request objects.

The CLI builds these from flags; a Python program builds them directly::

    async with caliban.Session() as s:
        result = await s.run(caliban.RunRequest(
            project=caliban.ProjectOptions(
                folder="tutorials/basic", entry="train.py", use_gpu=False
            ),
            experiments={"learning_rate": [0.01, 0.1]},
        ))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from caliban.dockerfile import Jupyter


@dataclass(frozen=True)
class ProjectOptions:
    """Which code to package, and how.

    ``use_gpu`` None means "not said": ``default_mode`` of .calibanconfig.json
    decides, and GPU mode when that is unset too (the original's default).
    ``image_id`` skips the build and uses that image as is.
    """

    folder: Path = field(default_factory=lambda: Path("."))
    entry: str | None = None
    use_gpu: bool | None = None
    extra_dirs: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    no_cache: bool = False
    image_id: str | None = None
    jupyter: Jupyter | None = None
    shell: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))


@dataclass(frozen=True)
class RunRequest:
    """A local run: one job, or a sweep when ``experiments`` is given.

    ``experiments`` is a validated experiment config (see
    :func:`caliban.experiment.validate`); ``script_args`` go before each
    experiment's flags. ``max_parallel`` None means one job per free GPU slot
    in GPU mode and one per CPU core otherwise.
    """

    project: ProjectOptions
    experiments: object | None = None
    script_args: tuple[str, ...] = ()
    xgroup: str | None = None
    max_parallel: int | None = None
    gpus_per_job: int | None = None
    gpu_ids: tuple[str, ...] | None = None
    docker_run_args: tuple[str, ...] = ()
    dry_run: bool = False
