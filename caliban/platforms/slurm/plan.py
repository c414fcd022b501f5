"""A checked ``caliban slurm submit``, and what its jobs record of it.

:class:`SlurmPlan` is what the platform's ``check`` makes of the request and
``preflight``/``publish`` complete (the cluster folder, the image, the OCI
bundle); each job's recorded spec is enough to submit that job again
(``resubmit``), whatever the flags of a later command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from caliban.platforms.base import JobSpec, Published, Row
from caliban.platforms.slurm import oci, spec
from caliban.platforms.slurm.commands import Cluster
from caliban.spec import JobRecord


@dataclass
class SlurmPlan:
    """A checked ``caliban slurm submit``; ``workdir``/``image`` are filled in
    by preflight and publish."""

    image: str | None
    resources: spec.Resources
    cluster: Cluster
    max_parallel: int | None
    per_job: bool
    docker_args: tuple[str, ...]
    slurm_dir: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    run_image: str = ""
    archive: str | None = None
    script_args: tuple[str, ...] = ()
    # "docker" (`docker run` on the node) or "oci" (Slurm's --container with
    # the image's bundle, filled in by publish: its path and the image's process).
    runtime: str = "docker"
    bundle_dir: str | None = None
    bundle: str | None = None
    process: Mapping[str, object] | None = None

    def script(self, batch: spec.Batch) -> str:
        """The batch script of ``batch`` for this plan's runtime."""
        if self.runtime == "oci":
            process = oci.ImageProcess.from_json(self.process or {})
            return oci.batch_script(batch, self.resources, process, self.bundle or "<bundle>")
        return spec.batch_script(batch, self.resources, docker_args=self.docker_args)

    def _job_spec(self, row: Row) -> dict[str, object]:
        return {
            "argv": list(row.argv),
            "resources": {
                **asdict(self.resources),
                "sbatch_args": list(self.resources.sbatch_args),
            },
            "host": self.cluster.host,
            "ssh_options": list(self.cluster.ssh_options),
            "slurm_dir": self.slurm_dir,
            "per_job": self.per_job,
            "docker_args": list(self.docker_args),
            "archive": self.archive,
            "runtime": self.runtime,
            "bundle": self.bundle,
            "process": dict(self.process) if self.process is not None else None,
        }

    def jobs(
        self,
        rows: Iterable[Row],
        *,
        total: int,
        xgroup: str,
        store_id: str,
        images: Mapping[str, str],
        commit: str | None = None,
    ) -> Iterator[JobSpec]:
        image = images.get("") or self.run_image
        for row in rows:
            yield JobSpec(row, self._job_spec(row), {"cluster": self.cluster.key}, image)

    def spec_key(self, published: Published) -> str:
        return json.dumps(
            {
                "platform": "slurm",
                "digest": published.digest,
                "cluster": self.cluster.key,
                "resources": asdict(self.resources),
                "per_job": self.per_job,
                "docker_args": list(self.docker_args),
                "runtime": self.runtime,
                "bundle": self.bundle,
            },
            sort_keys=True,
        )

    def record(self, published: Published) -> dict[str, object]:
        return {"platform": "slurm", "cluster": self.cluster.key}


@dataclass(frozen=True)
class Settings:
    max_parallel: int | None


def recorded_resources(job: JobRecord) -> spec.Resources:
    given = job.spec.get("resources")
    raw: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
    raw["sbatch_args"] = str_tuple(raw.get("sbatch_args"))
    return spec.Resources(**raw)


def str_tuple(value: object) -> tuple[str, ...]:
    """A recorded list of strings (JSON gives back lists)."""
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()


def nonempty_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def local_path(path: str) -> str:
    # Pure string work (no filesystem access): absolute, ~ expanded.
    return os.path.abspath(os.path.expanduser(path))


def dict_or_none(value: object) -> dict[str, object] | None:
    return dict(value) if isinstance(value, dict) else None


__all__ = [
    "Settings",
    "SlurmPlan",
    "dict_or_none",
    "local_path",
    "nonempty_str",
    "recorded_resources",
    "str_tuple",
]
