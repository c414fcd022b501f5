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
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiodocker
import anyio
import anyio.lowlevel

from caliban.adapters import docker as engine
from caliban.adapters.build import (
    BuiltImage,
    find_secrets,
    notice_conda,
    pip_source,
    refuse_secrets,
)
from caliban.adapters.build import build as build_image
from caliban.adapters.store import PlanItem, Planned, RunOwner, Store
from caliban.core import config as calibanconfig
from caliban.core import createjson, experiment, names, project, secretenv, userconfig
from caliban.core import settings as settingslib
from caliban.core.dockerargs import RunOptions
from caliban.core.dockerfile import BuildSpec, ImageUser
from caliban.core.jobmode import resolve_mode
from caliban.core.runflags import deep_merge
from caliban.errors import CalibanError, StoreError, StoreUnwritable, ValidationError
from caliban.events import JobsPlanned, Notice, Sink, discard
from caliban.options import NotebookRequest, ProjectOptions, RunRequest, ShellRequest
from caliban.platforms.base import Backend, Update
from caliban.platforms.local.containers import LocalBackend, container_config, rebind, run_options
from caliban.platforms.local.cpus import CpuInventory
from caliban.platforms.local.cpus import detect as detect_cpus
from caliban.platforms.local.gpus import GpuInventory
from caliban.platforms.local.gpus import detect as detect_gpus
from caliban.platforms.local.run import LEASE, execute, slots
from caliban.spec import JobMode, JobRecord, JobState, Platform

if TYPE_CHECKING:
    import aiohttp

    from caliban.adapters.cloud.auth import Credentials
    from caliban.options import (
        CloudRequest,
        ClusterCreateRequest,
        ClusterJobRequest,
        ClusterOptions,
    )
    from caliban.platforms.kubernetes.client import KubeConnections

Confirm = Callable[[Sequence[JobRecord]], Awaitable[bool]]

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


@dataclass(frozen=True)
class Prepared:
    """A project, checked and resolved: everything needed to build its image."""

    folder: Path
    mode: JobMode
    config: calibanconfig.CalibanConfig
    spec: BuildSpec
    repo: str

    def record(self, image: str, digest: str) -> dict[str, object]:
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


@dataclass
class RunResult:
    """What a run or a submission did. ``ok``: every local job succeeded, or every
    remote job was accepted by its platform."""

    xgroup: str
    jobs: list[JobRecord] = field(default_factory=list)
    skipped: int = 0
    dry_run: bool = False
    platform: Platform = Platform.LOCAL
    # The jobs this call launched, when it left others alone (a local re-run:
    # ones that succeeded before, or that another run is running). None: all.
    launched: frozenset[str] | None = None

    @property
    def counts(self) -> Counter[JobState]:
        return Counter(j.state for j in self.jobs)

    def _ours(self, job: JobRecord) -> bool:
        return self.launched is None or job.job_id in self.launched

    @property
    def ok(self) -> bool:
        """Every job this call launched succeeded (local) or was accepted (remote).
        Jobs left to another run are that run's to report."""
        accepted = (JobState.SUBMITTED, JobState.RUNNING, JobState.SUCCEEDED)
        return all(
            j.state is JobState.SUCCEEDED if j.platform is Platform.LOCAL else j.state in accepted
            for j in self.jobs
            if self._ours(j)
        )

    def tally(self) -> list[tuple[int, str]]:
        """Every job counted exactly once: by its state if this call launched
        it, else by why it was left alone."""
        counts: Counter[str] = Counter()
        for j in self.jobs:
            if self._ours(j):
                counts[j.state.value.lower()] += 1
            elif j.state is JobState.SUCCEEDED:
                counts["already succeeded"] += 1
            elif not j.state.terminal:
                counts["already running"] += 1
            else:  # left to another run, which recorded this meanwhile
                counts[f"{j.state.value.lower()} elsewhere"] += 1
        order = [s.value.lower() for s in JobState]
        return sorted(
            ((n, what) for what, n in counts.items()),
            key=lambda item: (order.index(item[1]) if item[1] in order else len(order), item[1]),
        )


LABELS_ENV = "CALIBAN_LABELS"


def _labels_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``CALIBAN_LABELS="team=vision,cost=q3"`` labels everything a session creates."""
    return settingslib.parse_labels(LABELS_ENV, environ.get(LABELS_ENV, ""))


def _safe_path_part(name: str) -> str:
    part = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]
    # "." and ".." would put the logs beside or above logs/ (groups recorded
    # before names were checked may still be called so).
    return "_" if part.strip(".") == "" else part


def _check_run_options(options: RunOptions) -> None:
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
        self._kube: KubeConnections | None = None
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

    async def container_options(
        self, args: Sequence[str], fragment: Mapping[str, Any] | None
    ) -> RunOptions:
        """``--docker_run_args`` and ``--docker_create_json`` as one set of options.

        The fragment is checked against the schema of the API version the daemon
        speaks (or the nearest one caliban has, with a warning) before anything
        is built or recorded.
        """
        options = await run_options(args, self.environ)
        if not fragment:
            return options
        createjson.check_owned(fragment)
        version = str((await (await self.docker()).version()).get("ApiVersion", ""))
        schema = createjson.schema_for(version)
        if not schema.exact:
            self.sink(
                Notice(
                    f"--docker_create_json: no Engine API {version} schema here; "
                    f"checked against {schema.version}",
                    level="warning",
                )
            )
        createjson.validate(fragment, schema)
        return dataclasses.replace(options, extra=deep_merge(options.extra, fragment))

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

    async def kube(self) -> KubeConnections:
        """Kubernetes API connections, one per cluster, closed with the session."""
        if self._kube is None:
            from caliban.platforms.kubernetes.client import KubeConnections

            self._kube = KubeConnections(self)
            self._stack.push_async_callback(self._kube.aclose)
        return self._kube

    async def _local(self) -> LocalBackend:
        store = await self.store()
        return LocalBackend(
            await self.docker(), store_id=store.store_id, sink=self.sink, force=self.force
        )

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

    async def build_prepared(self, prepared: Prepared, *, no_cache: bool = False) -> BuiltImage:
        docker = await self.docker()
        await notice_conda(prepared.folder, self.sink)
        return await build_image(
            docker,
            prepared.spec,
            prepared.folder,
            repo=prepared.repo,
            no_cache=no_cache,
            sink=self.sink,
            labels=self.labels,
            include=prepared.config.include_in_image,
            key_files=self._key_files(prepared),
        )

    async def build(self, project_opts: ProjectOptions) -> BuiltImage:
        """Build (or find, by content hash) the image of a project."""
        prepared = await self.prepare(project_opts)
        return await self.build_prepared(prepared, no_cache=project_opts.no_cache)

    # -- local runs ----------------------------------------------------------------------

    async def _gpu_plan(self, mode: JobMode, req: RunRequest) -> tuple[GpuInventory | None, int]:
        if mode is JobMode.CPU:
            if req.gpu_ids or req.gpus_per_job:
                raise ValidationError(
                    "--gpu_ids and --gpus_per_job need GPU mode; drop --nogpu or those flags"
                )
            return None, 0
        per_job = req.gpus_per_job or 1
        if per_job < 1:
            raise ValidationError("--gpus_per_job must be at least 1")
        inventory = await detect_gpus(req.gpu_ids, self.environ)
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

    async def _cpu_plan(
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
        cpus = await detect_cpus(self.environ, gpus=real_gpus)
        if per_job > len(cpus.cores):
            raise ValidationError(
                f"--cpus_per_job {per_job} is more than the {len(cpus.cores)} CPU core(s) "
                f"caliban may use here"
            )
        return cpus

    async def run(self, req: RunRequest) -> RunResult:
        """Build the project and run every experiment locally; see :class:`RunRequest`."""
        if req.project.use_gpu is None and (req.gpu_ids or req.gpus_per_job):
            # Naming GPUs asks for GPU mode, whatever default_mode says.
            req = dataclasses.replace(req, project=dataclasses.replace(req.project, use_gpu=True))
        if req.xgroup is not None:
            names.check_xgroup(req.xgroup)
        prepared = await self.prepare(req.project)
        if prepared.spec.entry is None and req.project.image_id is None:
            raise ValidationError("caliban run needs a script or module to run")
        inventory, per_job = await self._gpu_plan(prepared.mode, req)
        if req.max_parallel is not None and req.max_parallel < 1:
            raise ValidationError("--max_parallel must be at least 1")
        options = await self.container_options(req.docker_run_args, req.docker_create_json)
        _check_run_options(options)
        config = experiment.validate(req.experiments if req.experiments is not None else {})
        total = experiment.check_size(config, req.max_sweep)
        xgroup = req.xgroup or names.default_xgroup_name(self.user.name, datetime.now())
        base = options.apply({"Labels": dict(self.labels)} if self.labels else {})
        cpus = await self._cpu_plan(req.cpus_per_job, inventory, base)
        cpus_per_job = req.cpus_per_job or 0
        max_parallel = (
            req.max_parallel
            or slots(inventory, per_job, cpus, cpus_per_job)
            or (os.cpu_count() or 1)
        )

        # Secret -e values are recorded by name only and put back at launch.
        base, secret_values = secretenv.redact(base)
        secret_details = {secretenv.DETAILS_KEY: sorted(secret_values)} if secret_values else {}

        if req.dry_run:
            image = req.project.image_id or f"{prepared.repo}:<content hash>"
            for index, exp in enumerate(experiment.expand(config)):
                argv = experiment.to_argv(exp, req.script_args)
                body = container_config(
                    image=image,
                    argv=argv,
                    job_id="<job id>",
                    xgroup=xgroup,
                    store_id="<store>",
                    base=base,
                )
                self.sink(Notice(f"job {index + 1}/{total}: {_docker_run_line(body)}"))
                # Lets Ctrl-C and SIGTERM through however long the listing is.
                await anyio.lowlevel.checkpoint()
            self.sink(
                Notice(
                    f"dry run: {total} job(s) in {xgroup}; nothing was built, run or "
                    "recorded. Run again without --dry_run to execute them.",
                    level="status",
                )
            )
            return RunResult(xgroup, dry_run=True)

        # Both preconditions before any work: an engine, then a writable history.
        await self.docker()
        await self.check_store()
        if req.project.image_id:
            image, digest = req.project.image_id, req.project.image_id
            if not await engine.image_exists(await self.docker(), image):
                raise ValidationError(f"--image_id {image!r}: no such image on the Docker engine")
        else:
            built = await self.build_prepared(prepared, no_cache=req.project.no_cache)
            image, digest = built.tag, built.digest
        store = await self.store()
        user = self.user.name
        xgroup_id = await store.xgroup(xgroup, user)
        spec_id = await store.container_spec(
            f"local:{digest}", image, prepared.record(image, digest), user
        )
        logs = self.home / "logs" / _safe_path_part(xgroup)

        def items() -> Any:
            for index, exp in enumerate(experiment.expand(config)):
                job_id = names.new_job_id()
                argv = experiment.to_argv(exp, req.script_args)
                body = container_config(
                    image=image,
                    argv=argv,
                    job_id=job_id,
                    xgroup=xgroup,
                    store_id=store.store_id,
                    base=base,
                )
                yield PlanItem(
                    index=index,
                    args=tuple(argv),
                    kwargs=dict(exp),
                    job_id=job_id,
                    image=image,
                    spec=body,
                    details={
                        "mode": prepared.mode.value,
                        "gpus_per_job": per_job,
                        **({"cpus_per_job": cpus_per_job} if cpus_per_job else {}),
                        **secret_details,
                    },
                    log_path=str(logs / f"{job_id}.log"),
                )

        planned = await store.plan(
            xgroup_id=xgroup_id,
            container_spec_id=spec_id,
            platform=Platform.LOCAL,
            user=user,
            items=items(),
        )
        return await self._execute_local(
            planned,
            xgroup=xgroup,
            total=total,
            max_parallel=max_parallel,
            inventory=inventory,
            per_job=per_job,
            secrets=secret_values,
            cpus=cpus,
            cpus_per_job=cpus_per_job,
        )

    def _with_secrets(self, planned: Planned, values: Mapping[str, str]) -> Planned:
        """The job's spec with its secret -e values put back (never recorded)."""
        names = secretenv.names_of(planned.job.details)
        if not names or planned.action not in ("new", "reconcile"):
            return planned
        try:
            spec = secretenv.restore(planned.job.spec, names, values, self.environ)
        except secretenv.MissingSecret as exc:
            raise ValidationError(
                f"job {planned.job.short_id} needs ${exc.name}, which caliban records by "
                f"name only: export {exc.name} and run the command again"
            ) from None
        return dataclasses.replace(planned, job=dataclasses.replace(planned.job, spec=spec))

    async def _execute_local(
        self,
        planned: Sequence[Planned],
        *,
        xgroup: str,
        total: int,
        max_parallel: int,
        inventory: GpuInventory | None,
        per_job: int,
        secrets: Mapping[str, str] | None = None,
        cpus: CpuInventory | None = None,
        cpus_per_job: int = 0,
    ) -> RunResult:
        planned = [self._with_secrets(p, secrets or {}) for p in planned]
        store = await self.store()
        wanted = [p.job.job_id for p in planned if p.action in ("new", "reconcile")]
        run_id = await store.open_run(lease=LEASE)
        try:
            # Another `caliban run` of this group may hold some of them: we run
            # only what we claim, and leave the rest to it.
            claim = await store.claim(run_id, wanted)
            active = [p.job.job_id for p in planned if p.action == "active"]
            held = {**claim.held, **await store.owners(active)}
            mine = len(claim.claimed)
            skipped = len(planned) - mine
            self.sink(JobsPlanned(xgroup, total, mine, skipped))
            for line in skip_notices(
                xgroup,
                planned=len(planned),
                mine=mine,
                held=held,
                done=sum(1 for p in planned if p.action == "done"),
                orphans=sum(1 for j in active if j not in held),
            ):
                self.sink(Notice(line))
            jobs = await execute(
                planned,
                backend=await self._local(),
                store=store,
                sink=self.sink,
                total=total,
                max_parallel=max_parallel,
                inventory=inventory,
                gpus_per_job=per_job,
                run_id=run_id,
                claimed=claim.claimed,
                cpus=cpus,
                cpus_per_job=cpus_per_job,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await store.close_run(run_id)
        return RunResult(xgroup, jobs, skipped, launched=claim.claimed)

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

    # -- history -----------------------------------------------------------------------

    async def cluster_submit(self, req: ClusterJobRequest) -> RunResult:
        """One Kubernetes Job per experiment (or one Indexed Job for the sweep);
        see :mod:`caliban.platforms.kubernetes.submit`."""
        from caliban.platforms.kubernetes import submit as cluster_run

        return await cluster_run.submit(self, req)

    async def cluster_submit_file(
        self, opts: ClusterOptions, path: str, *, dry_run: bool = False
    ) -> list[dict[str, Any]]:
        """Create the Jobs of a manifest file as they are (not recorded)."""
        from caliban.platforms.kubernetes import admin as cluster_admin

        return await cluster_admin.submit_file(self, opts, path, dry_run=dry_run)

    async def cluster_create(self, req: ClusterCreateRequest) -> dict[str, Any]:
        """Create a GKE cluster and wait for it (the request body with ``dry_run``)."""
        from caliban.platforms.kubernetes import admin as cluster_admin

        return await cluster_admin.create_cluster(self, req)

    async def cloud(self, req: CloudRequest) -> RunResult:
        """One Vertex AI custom job per experiment (:mod:`caliban.platforms.vertex.submit`)."""
        from caliban.platforms.vertex import submit as cloud_run

        return await cloud_run.submit(self, req)

    async def _backend(self, platform: Platform, jobs: Sequence[JobRecord] = ()) -> Backend:
        if platform is Platform.LOCAL:
            return await self._local()
        if platform is Platform.VERTEX:
            from caliban.adapters.cloud.http import GoogleApi
            from caliban.platforms.vertex.client import VertexBackend

            # --cloud_key, else the key the jobs were submitted with while it still
            # exists, else $GOOGLE_APPLICATION_CREDENTIALS / ADC / the metadata server.
            key = self.cloud_key
            for job in jobs if key is None else ():
                recorded = str(job.details.get("cloud_key") or "")
                if recorded and await anyio.Path(recorded).is_file():
                    key = recorded
                    break
            api = GoogleApi(await self.http(), await self.credentials(key))
            return VertexBackend(api, store_id=(await self.store()).store_id)
        if platform is Platform.GKE:
            from caliban.platforms.kubernetes.jobs import KubeBackend

            return KubeBackend(
                await self.kube(), store_id=(await self.store()).store_id, sink=self.sink
            )
        raise ValidationError(f"the {platform.value} platform is not available in this build")

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[JobRecord]:
        """Ask each platform about the unfinished ``jobs`` and record what it says."""
        store = await self.store()
        open_jobs = [j for j in jobs if not j.state.terminal]
        by_platform: dict[Platform, list[JobRecord]] = {}
        for job in open_jobs:
            by_platform.setdefault(job.platform, []).append(job)
        if by_platform.get(Platform.LOCAL):
            # A live run records its own jobs; an exited container it has not
            # removed yet is its output still being saved, not an orphan.
            held = await store.owners([j.job_id for j in by_platform[Platform.LOCAL]])
            by_platform[Platform.LOCAL] = [
                j for j in by_platform[Platform.LOCAL] if j.job_id not in held
            ]
        updates: list[Update] = []
        for platform, group in by_platform.items():
            if not group:
                continue
            try:
                backend = await self._backend(platform, group)
                updates += await backend.refresh(group)
            except CalibanError as exc:
                self.sink(
                    Notice(
                        f"could not refresh {platform.value} jobs: {exc.message}", level="warning"
                    )
                )
        if updates:
            await store.transitions(
                [(u.job_id, u.state, u.exit_code, u.message, u.platform_id, None) for u in updates]
            )
        if not open_jobs:
            return list(jobs)
        fresh = {j.job_id: j for j in await store.jobs(job_ids=[j.job_id for j in jobs])}
        return [fresh.get(j.job_id, j) for j in jobs]

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
            jobs = await store.jobs(xgroup=xgroup)
            if per_experiment > 0:
                seen: Counter[int] = Counter()
                kept: list[JobRecord] = []
                for job in reversed(jobs):
                    seen[job.experiment_id] += 1
                    if seen[job.experiment_id] <= per_experiment:
                        kept.append(job)
                jobs = list(reversed(kept))
        else:
            jobs = await store.jobs(limit=8 if max_jobs is None else max_jobs)
        return await self.refresh(jobs) if refresh else jobs

    async def stop(
        self,
        *,
        xgroup: str | None = None,
        dry_run: bool = False,
        confirm: Confirm | None = None,
    ) -> list[JobRecord]:
        """Stop every unfinished job of this user (of one group, with ``xgroup``)."""
        store = await self.store()
        if xgroup is not None and not await store.has_xgroup(xgroup):
            raise ValidationError(f"no experiment group named {xgroup!r} in {self.db_path}")
        candidates = await store.jobs(
            xgroup=xgroup,
            states=(JobState.PLANNED, JobState.SUBMITTED, JobState.RUNNING, JobState.UNKNOWN),
        )
        jobs = [j for j in candidates if j.user == self.user.name]
        if dry_run or not jobs:
            await self._remove_leftovers(xgroup, dry_run=dry_run)
            return jobs
        if confirm is not None and not await confirm(jobs):
            return []
        by_platform: dict[Platform, list[JobRecord]] = {}
        for job in jobs:
            by_platform.setdefault(job.platform, []).append(job)
        local = by_platform.pop(Platform.LOCAL, [])
        if local:
            # Recorded first: a `caliban run` still waiting on these containers
            # must see STOPPED, not turn the kill into FAILED.
            await store.transitions(
                [
                    (j.job_id, JobState.STOPPED, None, "stopped by caliban stop", None, None)
                    for j in local
                ]
            )
            await (await self._local()).cancel(local)
        for platform, group in by_platform.items():
            backend = await self._backend(platform, group)
            updates = await backend.cancel(group)
            await store.transitions(
                [(u.job_id, u.state, u.exit_code, u.message, u.platform_id, None) for u in updates]
            )
        await self._remove_leftovers(xgroup, dry_run=False)
        return await store.jobs(job_ids=[j.job_id for j in jobs])

    async def _remove_leftovers(self, xgroup: str | None, *, dry_run: bool) -> None:
        """Containers of this store's finished jobs that are still on the engine
        (an interrupted run that could not clean up) are removed, the user's own only."""
        store = await self.store()
        if not await store.jobs(xgroup=xgroup, platform=Platform.LOCAL, limit=1):
            return  # cloud jobs only: no engine to ask
        try:
            backend = await self._local()
            containers = await backend.job_containers()
        except (CalibanError, aiodocker.DockerError):
            return  # no engine here: nothing local to clean
        if not containers:
            return
        records = await store.jobs(job_ids=list(containers))
        left = [
            j
            for j in records
            if j.state.terminal
            and j.user == self.user.name
            and (xgroup is None or j.xgroup == xgroup)
        ]
        if not left:
            return
        if dry_run:
            self.sink(
                Notice(f"{len(left)} leftover container(s) of finished jobs would be removed")
            )
            return
        async with anyio.create_task_group() as tg:
            for j in left:
                tg.start_soon(backend.remove, containers[j.job_id])
        self.sink(Notice(f"removed {len(left)} leftover container(s) of finished jobs"))

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
        store = await self.store()
        if not await store.has_xgroup(xgroup):
            raise ValidationError(f"no experiment group named {xgroup!r} in {self.db_path}")
        latest = await self.refresh(await store.latest_per_experiment(xgroup))

        def wanted(job: JobRecord) -> bool:
            if job.state in (JobState.FAILED, JobState.STOPPED):
                return True
            if all_jobs and job.state.terminal:
                return True
            # A remote job whose submission was cut short: look it up, send if missing.
            return job.platform is not Platform.LOCAL and job.state is JobState.PLANNED

        chosen = [j for j in latest if wanted(j)]
        if dry_run or not chosen:
            return RunResult(xgroup, chosen, dry_run=dry_run)
        if confirm is not None and not await confirm(chosen):
            return RunResult(xgroup)
        jobs: list[JobRecord] = []
        local = [j for j in chosen if j.platform is Platform.LOCAL]
        vertex = [j for j in chosen if j.platform is Platform.VERTEX]
        gke = [j for j in chosen if j.platform is Platform.GKE]
        if vertex:
            from caliban.platforms.vertex import submit as cloud_run

            jobs += await cloud_run.resubmit(self, vertex)
        if gke:
            from caliban.platforms.kubernetes import submit as cluster_run

            jobs += await cluster_run.resubmit(self, gke)
        if local:
            jobs += (await self._resubmit_local(local, xgroup, max_parallel)).jobs
        return RunResult(xgroup, jobs)

    async def _resubmit_local(
        self, jobs: Sequence[JobRecord], xgroup: str, max_parallel: int | None
    ) -> RunResult:
        docker = await self.docker()
        store = await self.store()
        for image in sorted({j.image for j in jobs}):
            if not await engine.image_exists(docker, image):
                raise ValidationError(
                    f"image {image} is no longer on the Docker engine; run the original "
                    "`caliban run` command again to rebuild it"
                )
        for old in jobs:
            # Before anything is recorded: the values come from this environment.
            self._with_secrets(Planned("new", old), {})
        new_items = []
        for old in jobs:
            job_id = names.new_job_id()
            log_path = str(self.home / "logs" / _safe_path_part(xgroup) / f"{job_id}.log")
            item = PlanItem.again(
                old,
                job_id=job_id,
                spec=rebind(old.spec, job_id),
                details=dict(old.details),
                log_path=log_path,
            )
            new_items.append((old, item))
        records = await store.add_jobs(new_items, user=self.user.name)
        gpu_jobs = [r for r in records if r.details.get("mode") == JobMode.GPU.value]
        inventory: GpuInventory | None = None
        per_job = 0
        if gpu_jobs:
            per_job = max(int(str(r.details.get("gpus_per_job") or 1)) for r in gpu_jobs)
            inventory = await detect_gpus(None, self.environ)
            if len(inventory.ids) < per_job:
                raise ValidationError(
                    f"these jobs ran with {per_job} GPU(s) each; this machine has "
                    f"{len(inventory.ids)} now"
                )
        # Jobs that held cores hold as many again.
        cpus_per_job = max(int(str(r.details.get("cpus_per_job") or 0)) for r in records)
        cpus = await self._cpu_plan(cpus_per_job or None, inventory, {})
        parallel = (
            max_parallel or slots(inventory, per_job, cpus, cpus_per_job) or (os.cpu_count() or 1)
        )
        planned = [Planned("new", r) for r in records]
        return await self._execute_local(
            planned,
            xgroup=xgroup,
            total=len(records),
            max_parallel=parallel,
            inventory=inventory,
            per_job=per_job,
            cpus=cpus,
            cpus_per_job=cpus_per_job,
        )

    async def job(self, job_id: str) -> JobRecord:
        found = await (await self.store()).job(job_id)
        if found is None:
            raise ValidationError(f"no job with id {job_id!r} (see `caliban status`)")
        return found

    async def logs(self, job_id: str, *, follow: bool = False) -> AsyncIterator[str]:
        job = await self.job(job_id)
        backend = await self._backend(job.platform, [job])
        async for chunk in backend.logs(job, follow=follow):
            yield chunk


def skip_notices(
    xgroup: str,
    *,
    planned: int,
    mine: int,
    held: Mapping[str, RunOwner],
    done: int,
    orphans: int,
    here: str | None = None,
) -> list[str]:
    """One line per reason a planned job is not run by this call."""
    here = socket.gethostname() if here is None else here
    lines: list[str] = []
    if held:
        owners = sorted(set(held.values()), key=lambda o: o.started)
        who = " and ".join(
            f"pid {o.pid}"
            + (f" on {o.host}" if o.host != here else "")
            + f" since {datetime.fromisoformat(o.started).astimezone():%H:%M}"
            for o in owners
        )
        if not mine:
            rest = "nothing is left to run here"
        elif mine + len(held) == planned:
            rest = f"running the {mine} others"
        else:
            rest = f"running {mine} others"
        lines.append(
            f"{len(held)} of {planned} jobs of xgroup {xgroup} are being run by {who}; {rest}"
        )
    if done:
        lines.append(f"{done} job(s) of {xgroup} already succeeded; not running them again")
    if orphans:
        lines.append(
            f"{orphans} job(s) of {xgroup} are still running from an earlier run; "
            "`caliban status` records how they end"
        )
    return lines


def _docker_run_line(body: Mapping[str, Any]) -> str:
    """A readable summary of a container config for --dry_run."""
    import shlex

    parts = ["docker run"]
    for e in body.get("Env", []):
        parts += ["-e", shlex.quote(e)]
    parts.append(body["Image"])
    parts += [shlex.quote(a) for a in body.get("Cmd", [])]
    return " ".join(parts)
