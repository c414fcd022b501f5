"""The seam between the sweep engine and the platforms jobs run on.

The engine (:mod:`caliban.sweep.engine`) owns the lifecycle of every sweep:
validate, prepare, build and publish the image, record each job's intent,
launch under limits, record every transition, and track, resubmit and stop
jobs later. A platform only answers the questions that differ per platform,
through :class:`Platform`:

* :meth:`Platform.check` turns a request into a typed, validated
  :class:`SweepPlan` (no side effects, no store);
* :meth:`Platform.preflight` and :meth:`Platform.publish` reach the platform
  once and make the image available to it;
* :meth:`Platform.launch` starts recorded jobs, reporting every change to the
  :class:`Launch` the engine hands it (the only way a platform records
  anything or talks to the user);
* :meth:`Platform.refresh`, :meth:`Platform.cancel` and :meth:`Platform.logs`
  ask about jobs already launched; :meth:`Platform.rebind` and
  :meth:`Platform.resume` prepare a resubmission.

A platform receives a :class:`Context`, the few resources it may use, never
the whole :class:`~caliban.session.Session`. Platforms are loaded by name
(:func:`load`), so a command that does not use one never imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Set,
)
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from caliban.core import config as calibanconfig
from caliban.core.dockerfile import BuildSpec
from caliban.events import Sink
from caliban.spec import JobMode, JobRecord, Update
from caliban.spec import Platform as Kind

if TYPE_CHECKING:
    import aiodocker
    import aiohttp
    import anyio

    from caliban.adapters.build import BuiltImage
    from caliban.adapters.cloud.auth import Credentials
    from caliban.adapters.store import Planned
    from caliban.core.experiment import Config
    from caliban.core.userconfig import UserConfig
    from caliban.limits import Pacing

__all__ = [
    "Context",
    "JobSpec",
    "Kind",
    "Launch",
    "Platform",
    "Prepared",
    "Published",
    "Rebound",
    "Relocates",
    "Row",
    "Submitter",
    "SweepPlan",
    "SweepRequest",
    "Tails",
    "Update",
    "job_label",
    "load",
]


@dataclass(frozen=True)
class Prepared:
    """A project, checked and resolved: everything needed to build its image."""

    folder: Path
    mode: JobMode
    config: calibanconfig.CalibanConfig
    spec: BuildSpec
    repo: str

    def record(self, image: str, digest: str) -> dict[str, object]:
        """What the store keeps about the image a sweep ran."""
        entry = self.spec.entry
        return {
            "folder": str(self.folder),
            "mode": self.mode.value,
            "entry": entry.target if entry else None,
            "extra_dirs": list(self.spec.extra_dirs),
            "extras": list(self.spec.extras),
            "base_image": self.spec.base_image,
            "apt_packages": list(self.spec.apt_packages),
            "image": image,
            "digest": digest,
        }


class Context(Protocol):
    """What a platform may use: the session's resources, opened lazily and
    closed with the session. Nothing here writes the store."""

    @property
    def environ(self) -> Mapping[str, str]: ...

    @property
    def sink(self) -> Sink: ...

    @property
    def user_name(self) -> str: ...

    @property
    def user_config(self) -> UserConfig: ...

    @property
    def labels(self) -> Mapping[str, str]:
        """Extra labels for everything the session creates."""
        ...

    @property
    def cloud_key(self) -> str | None:
        """``--cloud_key`` for status/stop/resubmit of remote jobs."""
        ...

    @property
    def home(self) -> Path: ...

    @property
    def force(self) -> anyio.Event:
        """Set on a second Ctrl-C: clean up without grace periods."""
        ...

    async def docker(self) -> aiodocker.Docker: ...

    async def check_engine(self) -> None:
        """That the Docker engine answers (:class:`~caliban.errors.EngineUnavailable`
        if not), without opening an aiodocker connection when it is on a Unix socket."""
        ...

    def engine_socket(self) -> str | None:
        """The Docker engine's Unix socket, for calls made without aiodocker; None when
        the engine is reached another way (TCP, TLS, a Docker context) or an aiodocker
        connection is open already."""
        ...

    async def http(self) -> aiohttp.ClientSession: ...

    async def credentials(self, key_file: str | None = None) -> Credentials: ...

    async def store_id(self) -> str:
        """The id of this history, put on every job so its jobs are told apart."""
        ...

    def text_setting(
        self,
        name: str,
        flag: str | None = None,
        project_config: calibanconfig.CalibanConfig | None = None,
    ) -> str | None: ...

    def setting(
        self,
        name: str,
        flag: object = None,
        project_config: calibanconfig.CalibanConfig | None = None,
    ) -> object: ...

    async def resource(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """One shared resource per ``key`` (a platform's API connections), made
        by ``factory`` on first use; closed with the session if it has ``aclose``."""
        ...


@dataclass(frozen=True)
class Row:
    """One expanded experiment and the job id it was given."""

    index: int
    kwargs: dict[str, object]
    job_id: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class JobSpec:
    """One planned job as its platform would run it: the request body and the
    placement that goes with it (``details``: a placement's ``to_details()``)."""

    row: Row
    spec: dict[str, object]
    details: dict[str, object]
    image: str


@dataclass(frozen=True)
class Published:
    """Where a sweep's image can be pulled from."""

    #: The reference jobs run (recorded with the sweep) and its digest.
    image: str
    digest: str
    #: The image per placement key where it differs (a registry per region);
    #: empty when every job runs ``image``.
    images: Mapping[str, str] = field(default_factory=dict)


class SweepRequest(Protocol):
    """What every sweep request has (:class:`~caliban.options.RunRequest`,
    :class:`~caliban.options.CloudRequest`, :class:`~caliban.options.ClusterJobRequest`)."""

    @property
    def experiments(self) -> object | None: ...

    @property
    def script_args(self) -> tuple[str, ...]: ...

    @property
    def xgroup(self) -> str | None: ...

    @property
    def dry_run(self) -> bool: ...

    @property
    def max_sweep(self) -> int: ...


class SweepPlan(Protocol):
    """A checked request for one platform: everything but the image."""

    @property
    def image(self) -> str | None:
        """An image the user named (nothing is built), or None."""
        ...

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
        """The request body and placement of each job, in order (pure). ``commit``:
        the short git commit of the code, for platforms whose jobs carry labels."""
        ...

    def spec_key(self, published: Published) -> str:
        """What makes two submissions the same jobs (a re-run resumes them)."""
        ...

    def record(self, published: Published) -> dict[str, object]:
        """Extra facts kept with the sweep's image record (the platform's name...)."""
        ...


@dataclass(frozen=True)
class Rebound:
    """A recorded job re-addressed to a new job id, for resubmission."""

    spec: dict[str, object]
    details: dict[str, object]


@runtime_checkable
class Relocates(Protocol):
    """A platform whose jobs ``caliban watch`` may move (Vertex's capacity
    ladder, Spot recoveries): the engine cancels the old attempt, waits until the
    platform confirms it ended, then launches what :meth:`relocate` returned."""

    def relocate(
        self, job: JobRecord, *, job_id: str, now: datetime, max_recoveries: int = 0
    ) -> Rebound | None:
        """The next attempt of ``job`` as ``job_id``, or None to leave it be."""
        ...


class Launch(Protocol):
    """What the engine hands a platform while it launches jobs."""

    @property
    def total(self) -> int:
        """How many jobs the sweep has (for labels such as ``3/40``)."""
        ...

    @property
    def sink(self) -> Sink: ...

    async def record(self, updates: Sequence[Update], *, force: bool = False) -> int:
        """Record state changes; returns how many changed anything. A terminal
        state is sticky unless ``force``."""
        ...

    async def current(self, job: JobRecord) -> JobRecord | None:
        """The job as recorded now, or None when this launch must leave it alone
        (stopped meanwhile, or its claim was lost to another run)."""
        ...

    async def unfinished(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        """Those of ``jobs`` still unfinished and not taken over by another run
        (what an interrupted launch must record as STOPPED)."""
        ...

    async def fan_out(
        self, planned: Sequence[Planned], submitter: Submitter, *, pacing: Pacing
    ) -> None:
        """Submit many jobs through the shared fan-out: paced, bounded, retried,
        each uncertain create looked up before anything is sent again."""
        ...


class Submitter(Protocol):
    """How a remote platform creates one job and finds one it may have created."""

    def quota_key(self, job: JobRecord) -> str: ...

    async def create(self, job: JobRecord) -> Update: ...

    async def find(self, job: JobRecord) -> Update | None: ...

    async def find_many(self, jobs: Sequence[JobRecord]) -> dict[str, Update]:
        """One lookup for many jobs (one list call per region or cluster)."""
        ...


class Platform(Protocol):
    """One platform. The engine drives it; it never writes the store itself."""

    kind: Kind
    #: Jobs run elsewhere and outlive the launch (Vertex, Kubernetes); a launch
    #: of a non-remote platform waits for its jobs to end.
    remote: bool
    #: Output of each job is kept in a log file under caliban's home.
    keeps_logs: bool

    def __init__(self, ctx: Context) -> None: ...

    async def check(self, request: Any, prepared: Prepared, xgroup: str) -> SweepPlan:
        """Validate a request; no side effects beyond reading local files
        (and, where the platform must, one read-only call to it)."""
        ...

    async def preview(
        self, plan: SweepPlan, config: Config, *, total: int, xgroup: str, prepared: Prepared
    ) -> None:
        """Show what a dry run would launch (events only; nothing is recorded)."""
        ...

    async def preflight(self, plan: SweepPlan, prepared: Prepared) -> None:
        """One cheap round trip that fails before anything is built or recorded."""
        ...

    def push_key(self, plan: SweepPlan) -> str | None:
        """The key file whose credentials push a remote platform's image (None:
        the default credentials); kept out of the image by the key scan."""
        ...

    async def publish(
        self, plan: SweepPlan, prepared: Prepared, built: BuiltImage | None
    ) -> Published:
        """Make the image reachable where jobs run: the built one, or (``built``
        None) the one the plan names, checked to exist."""
        ...

    def launch_settings(self, plan: SweepPlan) -> object:
        """How the jobs of a plan are launched (limits, pacing...)."""
        ...

    async def resume(self, jobs: Sequence[JobRecord], *, max_parallel: int | None) -> object:
        """Launch settings for resubmitting recorded jobs; refuses (bad input)
        what cannot be launched again here before anything is recorded."""
        ...

    async def launch(self, planned: Sequence[Planned], settings: object, run: Launch) -> None:
        """Launch every ``new``/``reconcile`` job of ``planned``."""
        ...

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        """The platform's view of many jobs, one call per region/cluster."""
        ...

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]: ...

    def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]: ...

    def rebind(self, job: JobRecord, job_id: str) -> Rebound:
        """The recorded spec and details of ``job``, re-addressed to ``job_id``."""
        ...

    async def leftovers(self) -> Mapping[str, object]:
        """Resources of this store's jobs still held on the platform by job id
        (containers an interrupted run could not remove); empty when none."""
        ...

    async def remove(self, handles: Sequence[object]) -> None: ...


@runtime_checkable
class Tails(Protocol):
    """A platform that reads the end of many jobs' output at once (one query for
    all of them) rather than one :meth:`Platform.logs` stream per job."""

    async def tails(self, jobs: Sequence[JobRecord], lines: int) -> Mapping[str, Sequence[str]]:
        """The last ``lines`` lines of each job's output, by job id (missing: none)."""
        ...


_REGISTRY: dict[Kind, str] = {
    Kind.LOCAL: "caliban.platforms.local.platform:LocalPlatform",
    Kind.VERTEX: "caliban.platforms.vertex.platform:VertexPlatform",
    Kind.GKE: "caliban.platforms.kubernetes.platform:KubernetesPlatform",
    Kind.SLURM: "caliban.platforms.slurm.platform:SlurmPlatform",
}


def register(kind: Kind, path: str) -> None:
    """Make ``module:Class`` the implementation of ``kind`` (tests, plug-ins)."""
    _REGISTRY[kind] = path


def load(kind: Kind) -> type[Platform]:
    """The platform class for ``kind``, imported on first use."""
    from caliban.errors import ValidationError

    path = _REGISTRY.get(kind)
    if path is None:
        raise ValidationError(f"the {kind.value} platform is not available in this build")
    module, _, name = path.partition(":")
    cls: type[Platform] = getattr(importlib.import_module(module), name)
    return cls


def job_label(job: JobRecord, total: int) -> str:
    """How events name a job: its place in the sweep and its short id (``3/40 ab12cd34``)."""
    width = len(str(total))
    return f"{job.index + 1:>{width}}/{total} {job.short_id}"


def ours(planned: Sequence[Planned], claimed: Set[str] | None = None) -> list[Planned]:
    """The jobs of ``planned`` a launch should start."""
    return [
        p
        for p in planned
        if p.action in ("new", "reconcile") and (claimed is None or p.job.job_id in claimed)
    ]
