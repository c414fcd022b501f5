"""Jobs as containers on the local Docker engine.

A job's container is named ``caliban-<job id>`` and labelled with the job id,
its experiment group and the store it belongs to, so a job can always be found
again: by a later ``caliban status``, by ``caliban stop`` from another
terminal, or by a re-run after a crash. Containers are removed once their
result and output are recorded.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio

from caliban.adapters import filemodes
from caliban.adapters.docker import MANAGED_LABEL, error_text, errors, label_filter, status_of
from caliban.core import dockerargs, topology
from caliban.errors import BackendError
from caliban.events import Sink
from caliban.platforms.base import Update
from caliban.platforms.local import gpus, joboutput
from caliban.platforms.local.engineapi import Client, Container, Engine, Handle
from caliban.platforms.local.gate import GATE_LABEL, NEVER_RAN, NEVER_RAN_CODE
from caliban.spec import JobRecord, JobState

if TYPE_CHECKING:
    import aiodocker

JOB_LABEL = "caliban.job"
XGROUP_LABEL = "caliban.xgroup"
STORE_LABEL = "caliban.store"

# How long a container gets between SIGTERM and SIGKILL when a run is stopped.
STOP_GRACE = 10
FORCED_GRACE = 0
DEFAULT_SHM_SIZE = 8 * 1024**3
# How long a create or start may take before the job is given up as FAILED.
ENGINE_ANSWER = 60.0


def container_name(job_id: str) -> str:
    return f"caliban-{job_id}"


def managed_config(
    *,
    image: str,
    argv: Sequence[str],
    store_id: str,
    labels: Mapping[str, str] | None = None,
    env: Sequence[str] = (),
    base: dict[str, Any] | None = None,
    tty: bool = False,
) -> dict[str, Any]:
    """The Engine API body of any container caliban creates: a job, a shell, a notebook.

    Every one is labelled as caliban's and as belonging to its store, so
    cleanup can find it; ``env`` goes before the base's own entries, so those win.
    """
    config: dict[str, Any] = copy.deepcopy(base) if base else {}
    config["Image"] = image
    config["Cmd"] = list(argv)
    config["Tty"] = tty
    config["Env"] = [*env, *config.get("Env", [])]
    config["Labels"] = {
        **config.get("Labels", {}),
        MANAGED_LABEL: "true",
        **(labels or {}),
        STORE_LABEL: store_id,
    }
    host = config.setdefault("HostConfig", {})
    # An init process forwards SIGTERM to the training script (python as
    # PID 1 would ignore it) and reaps zombies.
    host.setdefault("Init", True)
    # Data loaders (PyTorch's workers) pass batches through /dev/shm, and the
    # engine's 64 MB default breaks them. The original shared the host's IPC
    # namespace for that; a private one with a generous cap is enough, and the
    # cap costs nothing until written. `--ipc=host` or `--shm-size` override it.
    if host.get("IpcMode", "private") in ("private", "shareable", ""):
        host.setdefault("ShmSize", DEFAULT_SHM_SIZE)
    return config


def container_config(
    *,
    image: str,
    argv: Sequence[str],
    job_id: str,
    xgroup: str,
    store_id: str,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Engine API body that creates a job's container (GPUs come later)."""
    return managed_config(
        image=image,
        argv=argv,
        store_id=store_id,
        labels={JOB_LABEL: job_id, XGROUP_LABEL: xgroup},
        env=["PYTHONUNBUFFERED=1", f"CALIBAN_JOB_ID={job_id}", f"CALIBAN_XGROUP={xgroup}"],
        base=base,
    )


def with_gpus(config: dict[str, Any], ids: Sequence[str], *, simulated: bool) -> dict[str, Any]:
    if not ids:
        return config
    config = copy.deepcopy(config)
    config["Env"] = [*config.get("Env", []), *gpus.gpu_env(ids)]
    if not simulated:
        host = config.setdefault("HostConfig", {})
        host["DeviceRequests"] = [*host.get("DeviceRequests", []), *gpus.device_requests(ids)]
    return config


def with_cpus(
    config: dict[str, Any], cores: Sequence[int], *, simulated: bool, numa: int | None = None
) -> dict[str, Any]:
    """Pin the container to ``cores`` (and their NUMA node's memory, when known).

    Simulated cores exist only on paper: the job is told them, the engine is not.
    """
    if not cores:
        return config
    config = copy.deepcopy(config)
    listed = topology.format_cpu_list(cores)
    config["Env"] = [*config.get("Env", []), f"CALIBAN_CPUS={listed}"]
    if not simulated:
        host = config.setdefault("HostConfig", {})
        host["CpusetCpus"] = listed
        if numa is not None:
            host["CpusetMems"] = str(numa)
    return config


def exit_update(job_id: str, code: int) -> Update:
    """How a job that exited with ``code`` ended."""
    state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
    return Update(job_id, state, code, None if code == 0 else f"exit code {code}")


def _is_missing(exc: BaseException) -> bool:
    return status_of(exc) == 404


def _start_error(exc: BaseException) -> BackendError:
    text = error_text(exc)
    if "could not select device driver" in text:
        return BackendError(
            f"the Docker engine cannot give containers GPUs ({text})",
            hint="install the NVIDIA container toolkit, or run with --nogpu",
        )
    return BackendError(f"cannot start a container: {text}", status=status_of(exc))


class DockerEngine:
    """:class:`Engine` through an open aiodocker connection."""

    def __init__(self, docker: aiodocker.Docker) -> None:
        self.docker = docker

    async def listed(self, filters: str) -> list[tuple[Handle, dict[str, Any]]]:
        found = await self.docker.containers.list(all=True, filters=filters)
        return [(c, c._container) for c in found]

    async def output(self, handle: Handle) -> list[str]:
        container = cast("aiodocker.docker.DockerContainer", handle)
        return list(await container.log(stdout=True, stderr=True))

    def follow(self, handle: Handle) -> AsyncIterator[str]:
        container = cast("aiodocker.docker.DockerContainer", handle)
        return container.log(stdout=True, stderr=True, follow=True)


class JobContainers:
    """The containers of a store's jobs, whichever run made them: what ``status``
    reconciles, ``stop`` stops and ``logs`` reads. Needs no aiodocker of its own."""

    def __init__(
        self,
        engine: Engine,
        *,
        store_id: str,
        sink: Sink,
        force: anyio.Event | None = None,
    ) -> None:
        self.engine = engine
        self.store_id = store_id
        self.sink = sink
        # Set on a second Ctrl-C: stop containers without a grace period.
        self.force = force or anyio.Event()

    async def discard(self, container: Handle) -> None:
        """Remove at once, without a grace period: a pre-warmed container whose job
        never ran has nothing to lose."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE + 20):
            try:
                await container.delete(force=True, v=True)
            except errors() as exc:
                if not _is_missing(exc) and status_of(exc) != 409:
                    raise

    async def remove(self, container: Handle) -> None:
        """Stop and remove a container, shielded from cancellation: one handed out
        by :meth:`LocalBackend.run`'s ``reap``, or one caliban runs outside a job (a
        notebook)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE + 20):
            await self._remove(container)

    async def _remove(self, container: Handle) -> None:
        """Stop (politely unless forced) and remove; tolerate it being gone already."""
        grace = FORCED_GRACE if self.force.is_set() else STOP_GRACE

        async def kill_when_forced() -> None:
            await self.force.wait()
            with contextlib.suppress(*errors()):
                await container.kill()

        try:
            info = await container.show()
            if info["State"]["Running"]:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(kill_when_forced)
                    await container.stop(t=grace)
                    tg.cancel_scope.cancel()
            await container.delete(force=True, v=True)
        except errors() as exc:
            if not _is_missing(exc) and status_of(exc) != 409:
                raise

    # -- status / stop / logs for jobs of any run ------------------------------------------

    async def _containers(self) -> dict[str, dict[str, Any]]:
        found = await self.engine.listed(label_filter(**{STORE_LABEL: self.store_id}))
        out: dict[str, dict[str, Any]] = {}
        for handle, entry in found:
            labels = entry.get("Labels") or {}
            if JOB_LABEL in labels:
                out[labels[JOB_LABEL]] = {"container": handle, **entry}
        return out

    async def job_containers(self) -> dict[str, Handle]:
        """Every container of this store's jobs on the engine, by job id."""
        return {job_id: info["container"] for job_id, info in (await self._containers()).items()}

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        """Bring jobs whose recording process died up to date.

        A running container means RUNNING. An exited container that nobody
        removed belongs to a caliban process that was killed: its exit code is
        recorded, its full output saved to the job's log file, and it is
        removed. A container created but never started is removed and its job
        STOPPED (resubmit runs it), as is a pre-warmed one (labelled ``caliban.gate``)
        whose gate the dead run never opened after recording it RUNNING; one whose
        job is still PLANNED is removed and the job left PLANNED (the same command
        runs it). A job that was started but has no container left is FAILED.
        PLANNED jobs without a container may still be queued in a live run and
        are left alone.
        """
        containers = await self._containers()
        updates: list[Update] = []
        for job in jobs:
            info = containers.get(job.job_id)
            if info is None:
                if job.state in (JobState.RUNNING, JobState.SUBMITTED, JobState.UNKNOWN):
                    updates.append(
                        Update(job.job_id, JobState.FAILED, message="container disappeared")
                    )
                continue
            status = info.get("State")
            gated = GATE_LABEL in (info.get("Labels") or {})
            if gated and job.state is JobState.PLANNED:
                # Pre-warmed by a run now gone, gate never opened (RUNNING is recorded
                # before it is): the job never ran. It stays PLANNED, as a job that
                # run had not reached yet, and the same command runs it.
                await self.discard(info["container"])
            elif status == "running":
                updates.append(Update(job.job_id, JobState.RUNNING, platform_id=info["Id"]))
            elif status in ("exited", "dead"):
                container = info["container"]
                detail = await container.show()
                code = int(detail["State"].get("ExitCode", -1))
                text = "".join(await self.engine.output(container))
                if gated and code == NEVER_RAN_CODE and text.strip() == NEVER_RAN:
                    # RUNNING recorded, then the run died before opening the gate.
                    updates.append(
                        Update(
                            job.job_id,
                            JobState.STOPPED,
                            message="never started: the run that pre-warmed it ended",
                            platform_id=info["Id"],
                        )
                    )
                    await self.discard(container)
                    continue
                if job.log_path:
                    await filemodes.write_log(Path(job.log_path), text)
                state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
                updates.append(Update(job.job_id, state, exit_code=code, platform_id=info["Id"]))
                await self._remove(container)
            elif status == "created" and job.state is not JobState.PLANNED:
                # Made, recorded, never started: the run that would have started it is
                # gone (live runs' jobs are not refreshed here), so nothing ever will.
                updates.append(
                    Update(
                        job.job_id,
                        JobState.STOPPED,
                        message="never started: the run that created it ended",
                        platform_id=info["Id"],
                    )
                )
                await self._remove(info["container"])
        return updates

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        containers = await self._containers()
        updates: list[Update] = []

        async def stop_one(job: JobRecord) -> None:
            info = containers.get(job.job_id)
            if info is not None:
                await self._remove(info["container"])
            updates.append(Update(job.job_id, JobState.STOPPED, message="stopped by caliban stop"))

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(stop_one, job)
        return updates

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        """The job's output: from its container while it runs, else from its log file."""
        info = (await self._containers()).get(job.job_id)
        if info is not None and info.get("State") == "running":
            container = info["container"]
            if follow:
                async for chunk in self.engine.follow(container):
                    yield chunk
            else:
                for chunk in await self.engine.output(container):
                    yield chunk
            return
        if job.log_path and await anyio.Path(job.log_path).exists():
            async for text in joboutput.read_log(Path(job.log_path)):
                yield text
            return
        raise BackendError(f"no output recorded for job {job.short_id}")


class LocalBackend(JobContainers):
    """Running jobs (create, attach, start, wait and the rest) through an open
    aiodocker connection, or through :class:`~caliban.platforms.local.quick.QuickDocker`
    with its ``engine`` (a :class:`~caliban.platforms.local.quick.QuickEngine`)."""

    def __init__(
        self,
        docker: Client,
        *,
        store_id: str,
        sink: Sink,
        force: anyio.Event | None = None,
        engine: Engine | None = None,
    ) -> None:
        if engine is None:
            engine = DockerEngine(cast("aiodocker.Docker", docker))
        super().__init__(engine, store_id=store_id, sink=sink, force=force)
        self.docker = docker

    def by_name(self, name: str) -> Container:
        """A container by name, not looked up: the removal of one a create may have made."""
        return self.docker.containers.container(name)

    async def image_config(self, name: str) -> dict[str, Any]:
        """The image's own Config (ENTRYPOINT, CMD...); an engine error if it is not there."""
        info = await self.docker.images.inspect(name)
        config: dict[str, Any] = info.get("Config") or {}
        return config

    async def run(
        self,
        job: JobRecord,
        *,
        label: str,
        gpu_ids: Sequence[str] = (),
        simulated_gpus: bool = False,
        cpus: Sequence[int] = (),
        simulated_cpus: bool = False,
        numa: int | None = None,
        log_path: Path | None,
        on_started: Callable[[str], Awaitable[None]],
        adopt: bool = False,
        reap: Callable[[Any], None] | None = None,
    ) -> Update:
        """Run one job to completion and return how it ended.

        ``reap``: when given, an exited container is handed to it for removal
        instead of being removed here, so the job's GPUs and slot go to the
        next job while the engine deletes it.

        ``adopt``: the job was planned by an earlier run that may have created
        its container already; use that container if it is there.
        """
        container: Container | None = None
        # Set while a create is unanswered: the engine may make the container
        # anyway, and then only its name finds it.
        unanswered: str | None = None
        started = False
        try:
            if adopt:
                container = await self._existing(job.job_id)
                if container is not None:
                    info = await container.show()
                    labels = info["Config"].get("Labels") or {}
                    if labels.get(JOB_LABEL) != job.job_id:
                        # The name is ours but the container is not this job's:
                        # neither run nor removed (the except below removes ours).
                        container = None
                        raise BackendError(
                            f"a container named {container_name(job.job_id)} exists that "
                            f"caliban did not make for job {job.short_id}; rename or "
                            "remove it, then run again"
                        )
                    if GATE_LABEL in labels:
                        # Pre-warmed by an earlier run for a job still PLANNED: its
                        # gate was never opened, and its GPUs were that run's.
                        await self.discard(container)
                        container = None
                    else:
                        started = info["State"]["Status"] != "created"
            if container is None:
                config = with_gpus(job.spec, gpu_ids, simulated=simulated_gpus)
                config = with_cpus(config, cpus, simulated=simulated_cpus, numa=numa)
                unanswered = container_name(job.job_id)
                try:
                    created = await self._create(job, config, unanswered)
                except BackendError:
                    unanswered = None  # refused: nothing of ours was made
                    raise
                if created is None:
                    raise BackendError(
                        f"the Docker engine did not create the container of job "
                        f"{job.short_id} within {ENGINE_ANSWER:.0f} s"
                    )
                container, unanswered = created, None
            await on_started(container.id)
            # Started by the output pump once attached, so no byte is missed.
            start = None if started else functools.partial(self._start, container)
            await self._follow(container, job, label, log_path, start)
            outcome = await self._result(container, job.job_id)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE + 20):
                if container is not None:
                    await self._remove(container)
                elif unanswered is not None:
                    await self._remove(self.by_name(unanswered))
            raise
        if reap is not None:
            reap(container)
        else:
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE + 20):
                await self._remove(container)
        return outcome

    async def create(self, job: JobRecord, config: dict[str, Any]) -> Container:
        """Create a job's container from a finished ``config`` (a pre-warmed start)."""
        name = container_name(job.job_id)
        created = await self._create(job, config, name)
        if created is None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE + 20):
                await self.discard(self.by_name(name))
            raise BackendError(
                f"the Docker engine did not create the container of job "
                f"{job.short_id} within {ENGINE_ANSWER:.0f} s"
            )
        return created

    async def start(self, container: Container) -> None:
        await self._start(container)

    async def result(self, container: Container, job_id: str) -> Update:
        return await self._result(container, job_id)

    async def _create(self, job: JobRecord, config: dict[str, Any], name: str) -> Container | None:
        """Create, waiting for the answer even when cancelled (for a bounded
        time, then None): a create cut short on our side still makes the
        container on the engine, and the cleanup needs its handle, not a guess."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(ENGINE_ANSWER):
            try:
                return await self.docker.containers.create(config, name=name)
            except errors() as exc:
                raise BackendError(
                    f"cannot create the container of job {job.short_id}: {error_text(exc)}",
                    status=status_of(exc),
                ) from exc
        return None

    async def _start(self, container: Container) -> None:
        """Start, shielded like :meth:`_create`: a removal racing a start in
        flight can be refused by the engine, which would leave the container."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(ENGINE_ANSWER):
            try:
                await container.start()
            except errors() as exc:
                raise _start_error(exc) from exc
            return
        raise BackendError(f"the Docker engine did not start {container.id[:12]} in time")

    async def _result(self, container: Container, job_id: str) -> Update:
        try:
            result = await container.wait()
        except errors() as exc:
            if _is_missing(exc):  # removed by `caliban stop` from elsewhere
                return Update(job_id, JobState.STOPPED, message="container removed")
            raise
        return exit_update(job_id, int(result.get("StatusCode", -1)))

    async def _existing(self, job_id: str) -> Container | None:
        try:
            return await self.docker.containers.get(container_name(job_id))
        except errors() as exc:
            if _is_missing(exc):
                return None
            raise

    async def _follow(
        self,
        container: Container,
        job: JobRecord,
        label: str,
        log_path: Path | None,
        start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        await joboutput.pump(
            container,
            start=start,
            sink=self.sink,
            job_id=job.job_id,
            label=label,
            log_path=log_path,
        )


def rebind(spec: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A recorded container config, re-addressed to a new job (for resubmit)."""
    config = copy.deepcopy(spec)
    config["Env"] = [
        f"CALIBAN_JOB_ID={job_id}" if e.startswith("CALIBAN_JOB_ID=") else e
        for e in config.get("Env", [])
    ]
    config.setdefault("Labels", {})[JOB_LABEL] = job_id
    return config


async def run_options(args: Sequence[str], environ: Mapping[str, str]) -> dockerargs.RunOptions:
    """``--docker_run_args`` parsed off the event loop: ``--env-file`` and seccomp
    profiles are files to read."""
    return await anyio.to_thread.run_sync(
        lambda: dockerargs.parse_docker_run_args(list(args), environ=environ)
    )
