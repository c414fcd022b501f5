"""``caliban run``: the local platform, containers on this machine's Docker engine.

A launch runs each job to its end in a container holding its own GPU ids (and,
with ``cpus_per_job``, its own cores): :func:`caliban.platforms.local.run.execute`.
Planning checks every flag against the machine (GPU inventory, usable cores,
the daemon's Engine API schema for ``--docker_create_json``) before anything is
built; secret ``-e`` values are recorded by name only and put back at launch.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import anyio
import anyio.lowlevel

from caliban.adapters import docker as engine
from caliban.adapters.build import BuiltImage
from caliban.adapters.store import Planned
from caliban.core import createjson, experiment, secretenv
from caliban.core.dockerargs import RunOptions
from caliban.core.runflags import deep_merge
from caliban.errors import CalibanError, ValidationError
from caliban.events import Notice
from caliban.options import RunRequest
from caliban.platforms.base import (
    Context,
    JobSpec,
    Launch,
    Prepared,
    Published,
    Rebound,
    Row,
)
from caliban.platforms.local.containers import (
    JobContainers,
    LocalBackend,
    container_config,
    rebind,
    run_options,
)
from caliban.platforms.local.cpus import CpuInventory
from caliban.platforms.local.cpus import detect as detect_cpus
from caliban.platforms.local.engineapi import Handle
from caliban.platforms.local.gate import asked as prewarm_asked
from caliban.platforms.local.gate import open_gates
from caliban.platforms.local.gpus import GpuInventory
from caliban.platforms.local.gpus import detect as detect_gpus
from caliban.spec import JobMode, JobRecord, Update
from caliban.spec import Platform as Kind


@dataclass(frozen=True)
class LocalPlacement:
    """What a local job holds while it runs, as recorded in its details."""

    mode: JobMode
    gpus_per_job: int = 0
    cpus_per_job: int = 0
    secret_env: tuple[str, ...] = ()

    def to_details(self) -> dict[str, object]:
        details: dict[str, object] = {"mode": self.mode.value, "gpus_per_job": self.gpus_per_job}
        if self.cpus_per_job:
            details["cpus_per_job"] = self.cpus_per_job
        if self.secret_env:
            details[secretenv.DETAILS_KEY] = list(self.secret_env)
        return details

    @classmethod
    def from_details(cls, details: Mapping[str, object]) -> LocalPlacement:
        secret = details.get(secretenv.DETAILS_KEY)
        return cls(
            mode=JobMode.parse(str(details.get("mode") or JobMode.CPU.value)),
            gpus_per_job=_count(details.get("gpus_per_job"), 1),
            cpus_per_job=_count(details.get("cpus_per_job"), 0),
            secret_env=tuple(str(n) for n in secret) if isinstance(secret, list) else (),
        )


def _count(value: object, default: int) -> int:
    try:
        return int(str(value)) if value not in (None, "") else default
    except ValueError:
        return default


@dataclass(frozen=True)
class LocalSettings:
    """How a local launch runs: slots, GPUs, cores, and the secret values."""

    max_parallel: int
    inventory: GpuInventory | None
    gpus_per_job: int
    cpus: CpuInventory | None = None
    cpus_per_job: int = 0
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class LocalPlan:
    """A checked ``caliban run``."""

    request: RunRequest
    prepared: Prepared
    base: dict[str, Any]
    placement: LocalPlacement
    settings: LocalSettings

    @property
    def image(self) -> str | None:
        return self.request.project.image_id

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
        image = images[""]
        details = self.placement.to_details()
        for row in rows:
            body = container_config(
                image=image,
                argv=list(row.argv),
                job_id=row.job_id,
                xgroup=xgroup,
                store_id=store_id,
                base=self.base,
            )
            yield JobSpec(row, body, dict(details), image)

    def spec_key(self, published: Published) -> str:
        return f"local:{published.digest}"

    def record(self, published: Published) -> dict[str, object]:
        return {}


def _slots(
    inventory: GpuInventory | None, per_job: int, cpus: CpuInventory | None, cpus_per_job: int
) -> int | None:
    # The launch machinery (and aiodocker with it) is imported when jobs launch.
    from caliban.platforms.local.run import slots

    return slots(inventory, per_job, cpus, cpus_per_job)


def check_run_options(options: RunOptions) -> None:
    """Flags of --docker_run_args that would undo what caliban run guarantees."""
    if options.privileged:
        raise ValidationError(
            "--docker_run_args: --privileged gives every job all host devices, GPUs "
            "included, so jobs would no longer hold their GPUs exclusively",
            hint="grant what the job needs instead: --cap-add, --device, --security-opt",
        )
    if options.gpus:
        raise ValidationError(
            "--docker_run_args: --gpus is caliban's to set (each job gets its own GPUs); "
            "use --gpu_ids and --gpus_per_job, or --nogpu for none"
        )
    if options.entrypoint is not None:
        raise ValidationError(
            "--docker_run_args: --entrypoint is caliban's to set: each job runs the "
            "project's entry point with its sweep arguments"
        )


async def container_options(
    ctx: Context, args: Sequence[str], fragment: Mapping[str, Any] | None
) -> RunOptions:
    """``--docker_run_args`` and ``--docker_create_json`` as one set of options.

    The fragment is checked against the schema of the API version the daemon
    speaks (or the nearest one caliban has, with a warning) before anything is
    built or recorded.
    """
    options = await run_options(args, ctx.environ)
    if not fragment:
        return options
    createjson.check_owned(fragment)
    version = str((await (await ctx.docker()).version()).get("ApiVersion", ""))
    schema = createjson.schema_for(version)
    if not schema.exact:
        ctx.sink(
            Notice(
                f"--docker_create_json: no Engine API {version} schema here; "
                f"checked against {schema.version}",
                level="warning",
            )
        )
    createjson.validate(fragment, schema)
    return dataclasses.replace(options, extra=deep_merge(options.extra, fragment))


def docker_run_line(body: Mapping[str, Any]) -> str:
    """A readable summary of a container config for --dry_run."""
    parts = ["docker run"]
    for e in body.get("Env", []):
        parts += ["-e", shlex.quote(e)]
    parts.append(body["Image"])
    parts += [shlex.quote(a) for a in body.get("Cmd", [])]
    return " ".join(parts)


class LocalPlatform:
    """Jobs as containers on this machine's Docker engine."""

    kind = Kind.LOCAL
    remote = False
    keeps_logs = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._backend: LocalBackend | None = None
        self._quick: JobContainers | None = None

    async def backend(self) -> LocalBackend:
        """What runs jobs. On the engine's Unix socket with no aiodocker connection
        open (a no-change build opens none), through the standard library
        (:class:`~caliban.platforms.local.quick.QuickDocker`), so a sweep never waits
        for aiodocker's import before its first container; else through aiodocker."""
        if self._backend is None:
            store_id = await self.ctx.store_id()
            path = self.ctx.engine_socket()
            if path is None:
                self._backend = LocalBackend(
                    await self.ctx.docker(),
                    store_id=store_id,
                    sink=self.ctx.sink,
                    force=self.ctx.force,
                )
            else:
                from caliban.platforms.local.quick import QuickDocker, QuickEngine

                client = QuickDocker(path)
                self._backend = LocalBackend(
                    client,
                    store_id=store_id,
                    sink=self.ctx.sink,
                    force=self.ctx.force,
                    engine=QuickEngine(path, client.limiter),
                )
        return self._backend

    async def containers(self) -> JobContainers:
        """Jobs' containers for status, stop and logs. On the engine's Unix socket and
        with no aiodocker connection open, through the standard library
        (:mod:`caliban.platforms.local.quick`): those commands then never import
        aiodocker. A run's own connection, or an engine reached another way, serves
        them through aiodocker, as before."""
        if self._backend is not None:
            return self._backend
        if self._quick is None:
            path = self.ctx.engine_socket()
            if path is None:
                return await self.backend()
            from caliban.platforms.local.quick import QuickEngine

            self._quick = JobContainers(
                QuickEngine(path),
                store_id=await self.ctx.store_id(),
                sink=self.ctx.sink,
                force=self.ctx.force,
            )
        return self._quick

    # -- planning ------------------------------------------------------------------

    async def gpu_plan(
        self, mode: JobMode, gpu_ids: Sequence[str] | None, gpus_per_job: int | None
    ) -> tuple[GpuInventory | None, int]:
        if mode is JobMode.CPU:
            if gpu_ids or gpus_per_job:
                raise ValidationError(
                    "--gpu_ids and --gpus_per_job need GPU mode; drop --nogpu or those flags"
                )
            return None, 0
        per_job = gpus_per_job or 1
        if per_job < 1:
            raise ValidationError("--gpus_per_job must be at least 1")
        inventory = await detect_gpus(gpu_ids, self.ctx.environ)
        if not inventory.ids:
            raise ValidationError(
                "GPU mode (the default) but no GPU was found on this machine",
                hint='pass --nogpu, set "default_mode": "cpu" in .calibanconfig.json, '
                "or name GPUs with --gpu_ids",
            )
        if per_job > len(inventory.ids):
            raise ValidationError(
                f"--gpus_per_job {per_job} is more than the {len(inventory.ids)} GPU(s) "
                f"available ({','.join(inventory.ids)})"
            )
        return inventory, per_job

    async def cpu_plan(
        self, per_job: int | None, inventory: GpuInventory | None, base: Mapping[str, Any]
    ) -> CpuInventory | None:
        if per_job is None:
            return None
        if per_job < 1:
            raise ValidationError("--cpus_per_job must be at least 1")
        if base.get("HostConfig", {}).get("CpusetCpus"):
            raise ValidationError(
                "--docker_run_args: --cpuset-cpus is caliban's to set with --cpus_per_job "
                "(each job gets its own cores); drop one of them"
            )
        real_gpus = inventory is not None and not inventory.simulated and bool(inventory.ids)
        cpus = await detect_cpus(self.ctx.environ, gpus=real_gpus)
        if per_job > len(cpus.cores):
            raise ValidationError(
                f"--cpus_per_job {per_job} is more than the {len(cpus.cores)} CPU core(s) "
                f"caliban may use here"
            )
        return cpus

    async def check(self, request: RunRequest, prepared: Prepared, xgroup: str) -> LocalPlan:
        if prepared.spec.entry is None and request.project.image_id is None:
            raise ValidationError("caliban run needs a script or module to run")
        inventory, per_job = await self.gpu_plan(
            prepared.mode, request.gpu_ids, request.gpus_per_job
        )
        if request.max_parallel is not None and request.max_parallel < 1:
            raise ValidationError("--max_parallel must be at least 1")
        options = await container_options(
            self.ctx, request.docker_run_args, request.docker_create_json
        )
        check_run_options(options)
        labels = dict(self.ctx.labels)
        base = options.apply({"Labels": labels} if labels else {})
        cpus = await self.cpu_plan(request.cpus_per_job, inventory, base)
        cpus_per_job = request.cpus_per_job or 0
        max_parallel = (
            request.max_parallel
            or _slots(inventory, per_job, cpus, cpus_per_job)
            or (os.cpu_count() or 1)
        )
        # Secret -e values are recorded by name only and put back at launch.
        base, secrets = secretenv.redact(base)
        placement = LocalPlacement(prepared.mode, per_job, cpus_per_job, tuple(sorted(secrets)))
        settings = LocalSettings(max_parallel, inventory, per_job, cpus, cpus_per_job, secrets)
        return LocalPlan(request, prepared, base, placement, settings)

    async def preview(
        self,
        plan: LocalPlan,
        config: experiment.Config,
        *,
        total: int,
        xgroup: str,
        prepared: Prepared,
    ) -> None:
        image = plan.image or f"{prepared.repo}:<content hash>"
        for index, exp in enumerate(experiment.expand(config)):
            argv = experiment.to_argv(exp, plan.request.script_args)
            body = container_config(
                image=image,
                argv=argv,
                job_id="<job id>",
                xgroup=xgroup,
                store_id="<store>",
                base=plan.base,
            )
            self.ctx.sink(Notice(f"job {index + 1}/{total}: {docker_run_line(body)}"))
            await anyio.lowlevel.checkpoint()  # Ctrl-C gets through a long listing
        self.ctx.sink(
            Notice(
                f"dry run: {total} job(s) in {xgroup}; nothing was built, run or "
                "recorded. Run again without --dry_run to execute them.",
                level="status",
            )
        )

    async def preflight(self, plan: LocalPlan, prepared: Prepared) -> None:
        await self.ctx.check_engine()  # an engine first, then (the engine's caller) the store

    def push_key(self, plan: LocalPlan) -> str | None:
        return None

    async def publish(
        self, plan: LocalPlan, prepared: Prepared, built: BuiltImage | None
    ) -> Published:
        if built is not None:
            return Published(built.tag, built.digest, {"": built.tag})
        image = str(plan.image)
        if not await engine.image_exists(await self.ctx.docker(), image):
            raise ValidationError(f"--image_id {image!r}: no such image on the Docker engine")
        return Published(image, image, {"": image})

    def launch_settings(self, plan: LocalPlan) -> LocalSettings:
        return plan.settings

    # -- launching -----------------------------------------------------------------

    def _with_secrets(self, planned: Planned, values: Mapping[str, str]) -> Planned:
        """The job's spec with its secret -e values put back (never recorded)."""
        names = secretenv.names_of(planned.job.details)
        if not names or planned.action not in ("new", "reconcile"):
            return planned
        try:
            spec = secretenv.restore(planned.job.spec, names, values, self.ctx.environ)
        except secretenv.MissingSecret as exc:
            raise ValidationError(
                f"job {planned.job.short_id} needs ${exc.name}, which caliban records by "
                f"name only: export {exc.name} and run the command again"
            ) from None
        return dataclasses.replace(planned, job=dataclasses.replace(planned.job, spec=spec))

    async def launch(self, planned: Sequence[Planned], settings: object, run: Launch) -> None:
        from caliban.platforms.local.run import execute

        assert isinstance(settings, LocalSettings)
        todo = [self._with_secrets(p, settings.secrets) for p in planned]
        gates = await open_gates(self.ctx.environ) if todo else None
        if todo and gates is None and prewarm_asked(self.ctx.environ):
            self.ctx.sink(
                Notice(
                    "CALIBAN_PREWARM=1: plain starts (the gate helper cannot be built here "
                    "without a C compiler and static C library, or the engine is remote)",
                    level="warning",
                )
            )
        await execute(
            todo,
            backend=await self.backend(),
            run=run,
            max_parallel=settings.max_parallel,
            inventory=settings.inventory,
            gpus_per_job=settings.gpus_per_job,
            cpus=settings.cpus,
            cpus_per_job=settings.cpus_per_job,
            gates=gates,
        )

    async def resume(self, jobs: Sequence[JobRecord], *, max_parallel: int | None) -> LocalSettings:
        docker = await self.ctx.docker()
        for image in sorted({j.image for j in jobs}):
            if not await engine.image_exists(docker, image):
                raise ValidationError(
                    f"image {image} is no longer on the Docker engine; run the original "
                    "`caliban run` command again to rebuild it"
                )
        for old in jobs:
            # Before anything is recorded: the values come from this environment.
            self._with_secrets(Planned("new", old), {})
        placements = [LocalPlacement.from_details(j.details) for j in jobs]
        gpu_jobs = [p for p in placements if p.mode is JobMode.GPU]
        inventory: GpuInventory | None = None
        per_job = 0
        if gpu_jobs:
            per_job = max(p.gpus_per_job or 1 for p in gpu_jobs)
            inventory = await detect_gpus(None, self.ctx.environ)
            if len(inventory.ids) < per_job:
                raise ValidationError(
                    f"these jobs ran with {per_job} GPU(s) each; this machine has "
                    f"{len(inventory.ids)} now"
                )
        # Jobs that held cores hold as many again.
        cpus_per_job = max((p.cpus_per_job for p in placements), default=0)
        cpus = await self.cpu_plan(cpus_per_job or None, inventory, {})
        parallel = (
            max_parallel or _slots(inventory, per_job, cpus, cpus_per_job) or (os.cpu_count() or 1)
        )
        return LocalSettings(parallel, inventory, per_job, cpus, cpus_per_job)

    def rebind(self, job: JobRecord, job_id: str) -> Rebound:
        return Rebound(rebind(job.spec, job_id), dict(job.details))

    # -- after launch --------------------------------------------------------------

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        return await (await self.containers()).refresh(jobs)

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        return await (await self.containers()).cancel(jobs)

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        async for chunk in (await self.containers()).logs(job, follow=follow):
            yield chunk

    async def leftovers(self) -> Mapping[str, object]:
        try:
            return await (await self.containers()).job_containers()
        except engine.errors() as exc:
            raise CalibanError(f"the Docker engine did not answer: {exc}") from exc

    async def remove(self, handles: Sequence[object]) -> None:
        # The handles come from leftovers(), so from the same client as this one.
        containers = await self.containers()
        async with anyio.create_task_group() as tg:
            for handle in handles:
                tg.start_soon(containers.remove, cast("Handle", handle))
