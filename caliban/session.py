"""The library API: one :class:`Session` composes expand, build, launch and record.

Everything the CLI does is a method here that an asyncio program can call::

    async with caliban.Session(sink=print) as session:
        result = await session.run(caliban.RunRequest(...))
        for job in await session.status(xgroup=result.xgroup):
            ...

A session opens what it needs lazily (the Docker engine, the SQLite store,
an HTTP session for cloud platforms) and closes all of it on exit, also when
cancelled. Nothing is written to the store before every input is validated.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from caliban.adapters import docker as engine
from caliban.adapters.build import (
    BuiltImage,
    find_secrets,
    notice_conda,
    pip_source,
    refuse_secrets,
)
from caliban.adapters.build import build as build_image
from caliban.adapters.store import Store
from caliban.core import config as calibanconfig
from caliban.core import names, project, userconfig
from caliban.core import settings as settingslib
from caliban.core.dockerargs import RunOptions
from caliban.core.dockerfile import BuildSpec, ImageUser
from caliban.core.jobmode import resolve_mode
from caliban.errors import StoreError, StoreUnwritable, ValidationError
from caliban.events import Sink, discard
from caliban.options import NotebookRequest, ProjectOptions, RunRequest, ShellRequest
from caliban.platforms import base
from caliban.platforms.base import Platform as PlatformImpl
from caliban.platforms.base import Prepared
from caliban.spec import JobMode, JobRecord, JobState, Platform
from caliban.sweep import engine as sweep
from caliban.sweep.engine import Confirm, RunResult

if TYPE_CHECKING:
    import aiodocker
    import aiohttp

    from caliban.adapters.cloud.auth import Credentials
    from caliban.core.results import Result
    from caliban.options import (
        CloudRequest,
        ClusterCreateRequest,
        ClusterJobRequest,
        ClusterOptions,
        SlurmRequest,
    )
    from caliban.sweep.tails import FailedOutput

__all__ = ["Confirm", "Prepared", "RunResult", "Session", "host_user"]

_USERNAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def host_user() -> ImageUser:
    """The uid/gid/name containers run as: whoever runs caliban."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "caliban"
    if not _USERNAME.fullmatch(name):
        name = "caliban"
    return ImageUser(os.getuid(), os.getgid(), name)


LABELS_ENV = "CALIBAN_LABELS"


def _labels_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``CALIBAN_LABELS="team=vision,cost=q3"`` labels everything a session creates."""
    return settingslib.parse_labels(LABELS_ENV, environ.get(LABELS_ENV, ""))


class Session:
    """One unit of work against the engine, the platforms and the store."""

    def __init__(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        sink: Sink = discard,
        docker_url: str | None = None,
        user: ImageUser | None = None,
        environ: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        # The user file is read once, here, so a bad one stops every command
        # (exit 2) before anything is built or recorded.
        self.user_config = userconfig.load(self.environ)
        home_setting = str(self.setting("caliban_home"))
        self.home = Path(home) if home is not None else Path(home_setting).expanduser()
        # Extra labels on every image and container this session creates
        # (cost tracking, or a test run cleaning up after itself).
        configured = self.setting("labels")
        if labels is None and isinstance(configured, Mapping):
            labels = {str(k): str(v) for k, v in configured.items()}
        self.labels = dict(labels or {})
        self.sink = sink
        self.docker_url = docker_url
        self.user = user or host_user()
        # Set by the CLI on a second Ctrl-C: cleanup stops containers without grace.
        self.force = anyio.Event()
        self._stack = AsyncExitStack()
        self._docker: aiodocker.Docker | None = None
        self._store: Store | None = None
        self._http: aiohttp.ClientSession | None = None
        self._credentials: dict[str | None, Credentials] = {}
        # Credentials for status/stop/resubmit of cloud jobs (--cloud_key).
        self.cloud_key: str | None = None
        # --quota_project: billed for Google API calls instead of the credentials' own.
        self.quota_project: str | None = None
        # The command line that drives this session (the CLI sets it): provenance.
        self.argv: tuple[str, ...] | None = None
        self._resources: dict[str, Any] = {}
        self._platforms: dict[Platform, PlatformImpl] = {}
        # --cloud_key of a push (check_push): kept out of the image it builds.
        self._push_keys: list[str] = []

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

    # -- resources ---------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.home / "caliban.db"

    async def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = await self._stack.enter_async_context(engine.connect(self.docker_url))
        return self._docker

    def engine_socket(self) -> str | None:
        """The engine's Unix socket while no aiodocker connection is open, for the calls
        made without it (:mod:`caliban.adapters.enginequick`); None when the engine is
        reached another way. The choice is aiodocker's, from the process environment
        as aiodocker reads it: ``DOCKER_HOST``, the Docker context, the usual sockets."""
        if self._docker is not None:
            return None
        from caliban.adapters import enginequick

        return enginequick.local_socket(self.docker_url)

    async def check_engine(self) -> None:
        """That the engine answers, before anything is built or recorded. On its Unix
        socket, with the standard library: a run there needs no aiodocker connection."""
        path = self.engine_socket()
        if path is None:
            await self.docker()
            return
        from caliban.adapters import enginequick

        await enginequick.ping(path)

    async def container_options(
        self, args: Sequence[str], fragment: Mapping[str, Any] | None
    ) -> RunOptions:
        """``--docker_run_args`` and ``--docker_create_json`` as one set of options
        (see :func:`caliban.platforms.local.platform.container_options`)."""
        from caliban.platforms.local.platform import container_options

        return await container_options(self, args, fragment)

    async def store(self) -> Store:
        if self._store is None:
            self._store = await self._stack.enter_async_context(Store(self.db_path))
        return self._store

    async def check_store(self) -> None:
        """Open the history and make sure it takes writes: a store problem is
        reported before a long build, as bad set-up (exit 2), not after it."""
        try:
            store = await self.store()
        except StoreUnwritable:
            raise
        except StoreError as exc:
            raise StoreUnwritable(exc.message, hint=exc.hint) from exc
        await store.check_writable()

    async def http(self) -> aiohttp.ClientSession:
        """The one HTTP session of this Session (Google APIs, registries)."""
        if self._http is None:
            import aiohttp

            self._http = await self._stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
            )
        return self._http

    async def credentials(self, key_file: str | None = None) -> Credentials:
        """Google credentials, loaded once per key file (see :mod:`caliban.adapters.cloud.auth`)."""
        from caliban.adapters.cloud.auth import Credentials

        if key_file not in self._credentials:
            creds = await Credentials.load(
                await self.http(),
                key_file=key_file,
                environ=self.environ,
                quota_project=self.text_setting("gcloud.quota_project", self.quota_project),
            )
            self._stack.push_async_callback(creds.aclose)
            self._credentials[key_file] = creds
        return self._credentials[key_file]

    @property
    def user_name(self) -> str:
        return self.user.name

    async def store_id(self) -> str:
        return (await self.store()).store_id

    async def resource(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """One shared resource per ``key``, closed with the session."""
        if key not in self._resources:
            made = await factory()
            if hasattr(made, "aclose"):
                self._stack.push_async_callback(made.aclose)
            self._resources[key] = made
        return self._resources[key]

    async def platform(self, kind: Platform) -> PlatformImpl:
        """The platform ``kind``, loaded on first use (see :mod:`caliban.platforms.base`)."""
        if kind not in self._platforms:
            self._platforms[kind] = base.load(kind)(self)
        return self._platforms[kind]

    # -- settings ----------------------------------------------------------------------

    def settings(
        self,
        project_config: calibanconfig.CalibanConfig | None = None,
        folder: Path | None = None,
        *,
        flags: Mapping[str, object] | None = None,
        names: Iterable[str] | None = None,
    ) -> dict[str, settingslib.Resolved]:
        """Effective settings and their sources (see :mod:`caliban.core.settings`)."""
        return settingslib.resolve(
            flags=flags,
            environ=self.environ,
            project=settingslib.project_values(project_config)
            if project_config is not None
            else None,
            project_path=settingslib.project_path_for(str(folder)) if folder is not None else None,
            user=self.user_config,
            names=names,
        )

    def setting(
        self,
        name: str,
        flag: object = None,
        project_config: calibanconfig.CalibanConfig | None = None,
    ) -> object:
        """One effective setting's value; ``flag`` is the command line's, if it has one."""
        def_ = settingslib.BY_NAME[name]
        return settingslib.resolve_one(
            def_,
            flags={name: flag},
            environ=self.environ,
            project=settingslib.project_values(project_config)
            if project_config is not None
            else None,
            user=self.user_config,
        ).value

    def text_setting(
        self,
        name: str,
        flag: str | None = None,
        project_config: calibanconfig.CalibanConfig | None = None,
    ) -> str | None:
        """A setting whose value is a string, or None when nothing sets it."""
        value = self.setting(name, flag, project_config)
        return None if value is None else str(value)

    # -- build -------------------------------------------------------------------------

    async def prepare(
        self,
        project_opts: ProjectOptions,
        *,
        gpu_spec: object | None = None,
        tpu_spec: object | None = None,
    ) -> Prepared:
        """Check a project and decide what its image holds. No side effects."""
        if project_opts.image_id is not None:  # run, shell and notebook take one
            names.check_image_ref(project_opts.image_id, "--image_id")
        folder = project_opts.folder.resolve()
        facts = await anyio.to_thread.run_sync(
            project.inspect, folder, tuple(project_opts.extra_dirs)
        )
        cfg = await anyio.to_thread.run_sync(calibanconfig.load, folder)
        configured = self.settings(
            cfg, folder, names=("default_mode", "base_image.cpu", "base_image.gpu")
        )
        default_mode = JobMode.parse(str(configured["default_mode"].value))
        mode = resolve_mode(project_opts.use_gpu, gpu_spec, tpu_spec, default=default_mode)
        entry = None
        if project_opts.entry is not None:
            entry = await anyio.to_thread.run_sync(
                project.resolve_entrypoint, project_opts.entry, folder
            )
        await anyio.to_thread.run_sync(
            project.check_extras, folder, tuple(project_opts.extras), facts.setup_py
        )
        extras: tuple[str, ...] = ()
        if facts.setup_py:
            extras = tuple(dict.fromkeys([mode.value, *project_opts.extras]))
        apt = list(cfg.apt_packages_for(mode))
        if project_opts.shell == "zsh":
            apt.append("zsh")
        spec = BuildSpec(
            pip=await anyio.to_thread.run_sync(pip_source, folder, cfg.build_env),
            proxies=tuple(cfg.build_env.proxies().items()),
            base_image=str(configured[f"base_image.{mode.value}"].value),
            user=self.user,
            mode=mode,
            apt_packages=tuple(sorted(set(apt))),
            requirements=facts.requirements,
            setup_py=facts.setup_py,
            extras=extras,
            extra_dirs=tuple(project_opts.extra_dirs),
            entry=entry,
            jupyter=project_opts.jupyter,
        )
        repo = "caliban-" + names.docker_repo_name(folder.name)
        return Prepared(folder, mode, cfg, spec, repo)

    def _key_files(self, prepared: Prepared, key_file: str | None = None) -> list[str]:
        """Key files that stay out of the image wherever they are in the folder."""
        named = [key_file, self.cloud_key, *self._push_keys]
        named.append(self.text_setting("gcloud.cloud_key", None, prepared.config))
        # A CA bundle kept in the project folder must not ride into the image with `COPY .`.
        ca = prepared.config.build_env.ca_bundle
        if ca:
            named.append(str(prepared.folder / Path(ca).expanduser()))
        return [k for k in dict.fromkeys(named) if k]

    async def check_push(self, prepared: Prepared, *, key_file: str | None = None) -> None:
        """Refuse (exit 2, before anything is built) to push an image holding a key."""
        if key_file:
            self._push_keys.append(key_file)
        found = await anyio.to_thread.run_sync(
            find_secrets,
            prepared.folder,
            prepared.spec,
            prepared.config.include_in_image,
            self._key_files(prepared),
        )
        refuse_secrets(found)

    async def find_image(self, ref: str) -> dict[str, Any] | None:
        """One image inspect (None: no such image). Until a connection is open, and
        when the engine is on a local socket, without loading aiodocker."""
        path = self.engine_socket()
        if path is not None:
            from caliban.adapters import enginequick

            return await enginequick.inspect_image(path, ref)
        return await engine.inspect_image(await self.docker(), ref)

    async def build_prepared(self, prepared: Prepared, *, no_cache: bool = False) -> BuiltImage:
        await notice_conda(prepared.folder, self.sink)
        return await build_image(
            self.docker,
            prepared.spec,
            prepared.folder,
            repo=prepared.repo,
            no_cache=no_cache,
            sink=self.sink,
            labels=self.labels,
            include=prepared.config.include_in_image,
            key_files=self._key_files(prepared),
            find_image=self.find_image,
        )

    async def build(self, project_opts: ProjectOptions) -> BuiltImage:
        """Build (or find, by content hash) the image of a project."""
        prepared = await self.prepare(project_opts)
        return await self.build_prepared(prepared, no_cache=project_opts.no_cache)

    # -- sweeps ------------------------------------------------------------------------

    async def run(self, req: RunRequest) -> RunResult:
        """Build the project and run every experiment locally; see :class:`RunRequest`."""
        if req.project.use_gpu is None and (req.gpu_ids or req.gpus_per_job):
            # Naming GPUs asks for GPU mode, whatever default_mode says.
            req = dataclasses.replace(req, project=dataclasses.replace(req.project, use_gpu=True))
        return await sweep.submit(self, Platform.LOCAL, req)

    async def cloud(self, req: CloudRequest) -> RunResult:
        """One Vertex AI custom job per experiment; see :mod:`caliban.platforms.vertex`."""
        return await sweep.submit(self, Platform.VERTEX, req)

    async def cluster_submit(self, req: ClusterJobRequest) -> RunResult:
        """One Kubernetes Job per experiment (or one Indexed Job for the sweep);
        see :mod:`caliban.platforms.kubernetes`."""
        return await sweep.submit(self, Platform.GKE, req)

    async def slurm(self, req: SlurmRequest) -> RunResult:
        """The sweep as one Slurm array job; see :mod:`caliban.platforms.slurm`."""
        return await sweep.submit(self, Platform.SLURM, req)

    # -- interactive -------------------------------------------------------------------

    async def shell(self, req: ShellRequest, *, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
        """A shell in the project's image on this terminal; returns its exit code.
        See :func:`caliban.dev.shell.shell`."""
        from caliban.dev import shell as interactive

        return await interactive.shell(self, req, stdin_fd=stdin_fd, stdout_fd=stdout_fd)

    async def notebook(self, req: NotebookRequest) -> int:
        """A Jupyter server in the project's image until cancelled; returns its exit code.
        See :func:`caliban.dev.notebook.notebook`."""
        from caliban.dev import notebook

        return await notebook.notebook(self, req)

    async def cluster_submit_file(
        self, opts: ClusterOptions, path: str, *, dry_run: bool = False
    ) -> list[dict[str, Any]]:
        """Create the Jobs of a manifest file as they are (not recorded)."""
        from caliban.platforms.kubernetes import admin

        return await admin.submit_file(self, opts, path, dry_run=dry_run)

    async def cluster_create(self, req: ClusterCreateRequest) -> dict[str, Any]:
        """Create a GKE cluster and wait for it (the request body with ``dry_run``)."""
        from caliban.platforms.kubernetes import admin

        return await admin.create_cluster(self, req)

    async def cluster_list(self, opts: ClusterOptions) -> list[dict[str, Any]]:
        """GKE clusters of the project (of ``opts.zone`` if given)."""
        from caliban.platforms.kubernetes import admin

        return await admin.list_clusters(self, opts)

    async def cluster_delete(
        self,
        opts: ClusterOptions,
        *,
        confirm: Callable[[str], Awaitable[bool]] | None = None,
        timeout_s: float = 1800.0,
    ) -> bool:
        """Delete a GKE cluster once ``confirm`` agrees; whether it was deleted."""
        from caliban.platforms.kubernetes import admin

        return await admin.delete_cluster(self, opts, confirm=confirm, timeout_s=timeout_s)

    async def cluster_node_pools(self, opts: ClusterOptions) -> list[tuple[str, str, str, str]]:
        """NAME, MACHINE TYPE, ACCELERATORS, MAX NODES of each node pool."""
        from caliban.platforms.kubernetes import admin

        return list(await admin.node_pools(self, opts))

    async def cluster_pods(self, opts: ClusterOptions) -> list[dict[str, Any]]:
        """Pods of ``opts.namespace``, else of every namespace but kube-system."""
        from caliban.platforms.kubernetes import admin

        return await admin.pods(self, opts)

    async def cluster_jobs(self, opts: ClusterOptions) -> list[tuple[str, str, str, str]]:
        """NAMESPACE/NAME, STATE, COMPLETIONS, start of each Job (of ``opts.namespace``)."""
        from caliban.platforms.kubernetes import admin
        from caliban.platforms.kubernetes.plan import describe

        return [describe(j) for j in await admin.jobs(self, opts)]

    # -- history -----------------------------------------------------------------------

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        """Ask each platform about the unfinished ``jobs`` and record what it says."""
        return await sweep.refresh(self, jobs)

    async def status(
        self, *, xgroup: str | None = None, max_jobs: int | None = None, refresh: bool = True
    ) -> list[JobRecord]:
        """Jobs, oldest first: the latest ``max_jobs`` (default 8, 0 for all) or,
        with ``xgroup``, the latest ``max_jobs`` (default 1) of each of its experiments."""
        store = await self.store()
        if xgroup is not None:
            if not await store.has_xgroup(xgroup):
                raise ValidationError(f"no experiment group named {xgroup!r} in {self.db_path}")
            per_experiment = 1 if max_jobs is None else max_jobs
            jobs = await store.jobs(xgroup=xgroup, per_experiment=per_experiment)
        else:
            jobs = await store.jobs(limit=8 if max_jobs is None else max_jobs)
        return await self.refresh(jobs) if refresh else jobs

    async def watch(
        self,
        *,
        xgroup: str | None = None,
        interval: float = 10.0,
        max_recoveries: int = 0,
    ) -> RunResult:
        """Follow ``xgroup`` (default: the latest job's) until every job has ended,
        moving Vertex jobs along their capacity ladder (see docs/capacity.md)."""
        from caliban.sweep.watch import watch

        return await watch(self, xgroup=xgroup, interval=interval, max_recoveries=max_recoveries)

    async def results(self, *, xgroup: str | None = None) -> list[Result]:
        """What the latest job of each experiment of ``xgroup`` (default: the group of
        the most recent job) reported, in sweep order; see :mod:`caliban.sweep.results`.
        Unfinished jobs are refreshed first and come without metrics."""
        from caliban.sweep import results

        group = xgroup if xgroup is not None else await sweep.latest_xgroup(self)
        return await results.results(self, await self.status(xgroup=group, max_jobs=1))

    async def stop(
        self,
        *,
        xgroup: str | None = None,
        dry_run: bool = False,
        confirm: Confirm | None = None,
    ) -> list[JobRecord]:
        """Stop every unfinished job of this user (of one group, with ``xgroup``)."""
        return await sweep.stop(self, xgroup=xgroup, dry_run=dry_run, confirm=confirm)

    async def resubmit(
        self,
        *,
        xgroup: str,
        all_jobs: bool = False,
        dry_run: bool = False,
        confirm: Confirm | None = None,
        max_parallel: int | None = None,
    ) -> RunResult:
        """Launch again the latest job of each experiment of ``xgroup`` that failed or
        was stopped (every one with ``all_jobs``), with the spec recorded for it."""
        return await sweep.resubmit(
            self,
            xgroup=xgroup,
            all_jobs=all_jobs,
            dry_run=dry_run,
            confirm=confirm,
            max_parallel=max_parallel,
        )

    async def job(self, job_id: str) -> JobRecord:
        found = await (await self.store()).job(job_id)
        if found is None:
            raise ValidationError(f"no job with id {job_id!r} (see `caliban status`)")
        return found

    async def failed_logs(self, xgroup: str, *, lines: int = 20) -> list[FailedOutput]:
        """The last ``lines`` lines of output of every failed job of ``xgroup`` (the
        latest job of each experiment, states refreshed first), each with a likely cause."""
        from caliban.sweep import tails

        jobs = await self.status(xgroup=xgroup)
        kinds = {j.platform for j in jobs if j.state is JobState.FAILED}
        platforms = {kind: await self.platform(kind) for kind in kinds}
        return await tails.failed_output(platforms, jobs, lines)

    async def logs(self, job_id: str, *, follow: bool = False) -> AsyncIterator[str]:
        job = await self.job(job_id)
        platform = await self.platform(job.platform)
        async for chunk in platform.logs(job, follow=follow):
            yield chunk
