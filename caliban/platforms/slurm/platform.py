"""Slurm behind the platform seam: a sweep is one array job on a cluster.

Crash safety: before ``sbatch`` each job records the batch it goes in (the
array's name, ``caliban-<batch>``, and its task number); after, the array's
id. A re-run finds a batch whose answer was lost by that name in ``squeue``
(and in the jobcomp file once slurmctld has forgotten it), with the store id
in the comment, before anything is sent again.

Final states without slurmdbd: ``squeue --json`` while slurmctld keeps
finished jobs (``MinJobAge``), then the ``jobcomp/filetxt`` file, one line per
finished job, both read once per cluster per refresh.
"""

from __future__ import annotations

import codecs
import json
import re
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio

from caliban.adapters.build import BuiltImage
from caliban.adapters.docker import error_text, errors, status_of
from caliban.adapters.store import Planned
from caliban.core.config import SLURM_RUNTIMES
from caliban.core.experiment import Config
from caliban.errors import BackendError, ValidationError
from caliban.events import Document, JobStateChanged, Notice
from caliban.options import SlurmRequest
from caliban.platforms.base import (
    Context,
    Kind,
    Launch,
    Prepared,
    Published,
    Rebound,
    job_label,
    ours,
)
from caliban.platforms.slurm import bundle, limits, oci, spec, states
from caliban.platforms.slurm.commands import Cluster, Slurm
from caliban.platforms.slurm.plan import (
    Settings,
    SlurmPlan,
    dict_or_none,
    local_path,
    nonempty_str,
    recorded_resources,
    str_tuple,
)
from caliban.spec import JobMode, JobRecord, JobState, Update

_POLL = 1.0


class SlurmPlatform:
    kind = Kind.SLURM
    remote = True
    # Task output stays on the cluster's filesystem; `logs` reads it there.
    keeps_logs = False

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._clients: dict[str, Slurm] = {}

    # -- clusters ---------------------------------------------------------------------

    def _cluster(self, host: str | None, ssh_options: Sequence[str] = ()) -> Cluster:
        return Cluster(host=host, ssh_options=tuple(ssh_options), environ=dict(self._ctx.environ))

    def _client(self, cluster: Cluster) -> Slurm:
        if cluster.key not in self._clients:
            self._clients[cluster.key] = Slurm(cluster)
        return self._clients[cluster.key]

    def _job_client(self, job: JobRecord) -> Slurm:
        host = job.spec.get("host")
        options = job.spec.get("ssh_options") or []
        return self._client(self._cluster(nonempty_str(host), str_tuple(options)))

    # -- submit -----------------------------------------------------------------------

    async def check(self, request: Any, prepared: Prepared, xgroup: str) -> SlurmPlan:
        req: SlurmRequest = request
        gpus = req.gpus_per_job
        if gpus is None:
            gpus = 1 if prepared.mode is JobMode.GPU else 0
        elif gpus > 0 and prepared.mode is JobMode.CPU:
            raise ValidationError("--gpus_per_job needs GPU mode; drop --nogpu")
        resources = spec.Resources(
            partition=req.partition,
            time=req.time,
            mem=req.mem,
            cpus_per_job=req.cpus_per_job,
            gpus_per_job=gpus or None,
            gpu_flag=req.gpu_flag,
            account=req.account,
            qos=req.qos,
            sbatch_args=tuple(req.sbatch_args),
        )
        limits.check_syntax(resources)  # the cluster's own limits are read in preflight
        if req.per_job and req.max_parallel is not None:
            raise ValidationError(
                "--max_parallel throttles an array; it cannot limit --per_job jobs"
            )
        runtime = str(self._ctx.setting("slurm.runtime", req.runtime, prepared.config))
        if runtime not in SLURM_RUNTIMES:
            raise ValidationError(
                f"unknown Slurm runtime {runtime!r}; use one of {', '.join(SLURM_RUNTIMES)}"
            )
        bundle_dir = self._ctx.text_setting("slurm.bundle_dir", req.bundle_dir, prepared.config)
        if runtime == "oci" and req.docker_run_args:
            raise ValidationError(
                "--docker_run_args cannot be used with --runtime oci: tasks run in an OCI "
                "bundle through Slurm's --container, not with `docker run`"
            )
        if req.bundle_dir is not None and runtime != "oci":
            raise ValidationError("--bundle_dir is for --runtime oci (these tasks use docker)")
        return SlurmPlan(
            image=req.image_tag,
            resources=resources,
            cluster=self._cluster(req.host, req.ssh_options),
            max_parallel=req.max_parallel,
            per_job=req.per_job,
            docker_args=tuple(req.docker_run_args),
            slurm_dir=req.slurm_dir,
            labels=dict(self._ctx.labels),
            script_args=tuple(req.script_args),
            runtime=runtime,
            bundle_dir=bundle_dir,
        )

    def _batch(
        self,
        plan: SlurmPlan,
        tasks: Sequence[spec.Task],
        *,
        xgroup: str,
        store_id: str,
        batch_id: str,
        workdir: str,
    ) -> spec.Batch:
        return spec.Batch(
            batch_id=batch_id,
            workdir=workdir,
            tasks=tuple(tasks),
            store_id=store_id,
            xgroup=xgroup,
            image=plan.run_image or plan.image or "IMAGE",
            max_parallel=plan.max_parallel,
            array=not plan.per_job,
            labels=plan.labels,
            image_archive=plan.archive,
        )

    async def preview(
        self, plan: Any, config: Config, *, total: int, xgroup: str, prepared: Prepared
    ) -> None:
        from caliban.core import experiment

        tasks = [
            spec.Task(f"<job {i + 1}>", tuple(experiment.to_argv(exp, plan.script_args)))
            for i, exp in enumerate(experiment.expand(config))
        ]
        root = plan.slurm_dir or "<slurm_dir>"
        batch = self._batch(
            plan,
            tasks,
            xgroup=xgroup,
            store_id="<store>",
            batch_id="<batch>",
            workdir=f"{root}/<batch>",
        )
        if plan.runtime == "oci" and plan.bundle is None:
            plan.bundle = f"{plan.bundle_dir or root}/{bundle.BUNDLES}/<image id>"
            plan.process = oci.ImageProcess((), ("<the image's entrypoint>",), ()).to_json()
        self._ctx.sink(Document(plan.script(batch)))
        self._ctx.sink(
            Notice(
                f"{total} task(s) as {'separate jobs' if plan.per_job else 'one array job'}; "
                f"{spec.ARGS}:\n{spec.args_file(tasks)}",
                "status",
            )
        )

    async def preflight(self, plan: Any, prepared: Prepared) -> None:
        slurm = self._client(plan.cluster)
        partitions = await slurm.partitions()
        default = next((p for p in partitions.values() if p.default), None)
        part = partitions.get(plan.resources.partition or "") or default
        max_gpus = await slurm.max_gpus(part) if part is not None else 0
        qos = await slurm.qos_names() if plan.resources.qos else []
        limits.check_resources(plan.resources, partitions, max_gpus=max_gpus, qos_names=qos)
        if plan.slurm_dir is None:
            if plan.cluster.host is None:
                plan.slurm_dir = str(self._ctx.home / "slurm")
            else:
                plan.slurm_dir = f"{await slurm.home()}/.caliban/slurm"
        if plan.runtime == "oci":
            # Absolute: --container wants it, and the task reads its arguments
            # inside the bundle, where the working folder is the image's.
            plan.slurm_dir = await self._absolute(slurm, plan.slurm_dir)
            plan.bundle_dir = await self._absolute(slurm, plan.bundle_dir or plan.slurm_dir)
            await bundle.check_writable(slurm, plan.bundle_dir)
        # slurmctld checks what is left (memory, CPUs, account) without queuing anything.
        probe = self._batch(
            plan,
            [spec.Task("probe", ())],
            xgroup="probe",
            store_id="probe",
            batch_id="probe",
            workdir=plan.slurm_dir,
        )
        await slurm.test_only(spec.batch_script(probe, plan.resources))

    async def _absolute(self, slurm: Slurm, path: str) -> str:
        """``path`` on the cluster as an absolute path (relative ones from the
        current folder here, from the login user's home over ssh)."""
        if slurm.cluster.host is None:
            return local_path(path)
        if path.startswith("~/"):
            path = f"{await slurm.home()}/{path[2:]}"
        elif not path.startswith("/"):
            path = f"{await slurm.home()}/{path}"
        return path.rstrip("/") or "/"

    def push_key(self, plan: Any) -> str | None:
        return None

    async def publish(self, plan: Any, prepared: Prepared, built: BuiltImage | None) -> Published:
        info: dict[str, Any] | None = None
        if built is not None:
            image, digest = built.tag, built.digest or built.image_id
        else:
            info = await self._inspect(plan.image)
            image, digest = plan.image, str(info.get("Id", ""))
        plan.run_image = image
        if plan.runtime == "oci":
            await self._bundle(
                plan, image, info if info is not None else await self._inspect(image)
            )
        elif plan.cluster.host is not None:
            plan.archive = await self._export(plan, image, digest)
        return Published(image=image, digest=digest, images={"": image})

    async def _inspect(self, image: str) -> dict[str, Any]:
        docker = await self._ctx.docker()
        try:
            info: dict[str, Any] = await docker.images.inspect(image)
        except errors() as exc:
            if status_of(exc) == 404:
                raise ValidationError(f"image {image!r} is not on this machine") from None
            raise BackendError(
                f"Docker engine: image inspect of {image}: {error_text(exc)}",
                status=status_of(exc),
            ) from None
        return info

    async def _bundle(self, plan: SlurmPlan, image: str, info: Mapping[str, Any]) -> None:
        """The image's OCI bundle on the cluster, exported once per image id."""
        config = info.get("Config") or {}
        made = await bundle.ensure(
            self._client(plan.cluster),
            image=image,
            image_id=str(info.get("Id", "")),
            image_config=config if isinstance(config, dict) else {},
            root=plan.bundle_dir or str(plan.slurm_dir),
            shared=str(plan.slurm_dir),
            notify=lambda text: self._ctx.sink(Notice(text, "status")),
        )
        plan.bundle = made.path
        plan.process = made.process.to_json()

    async def _export(self, plan: SlurmPlan, image: str, digest: str) -> str:
        """Put the image, once per digest, where the cluster's nodes load it from."""
        slurm = self._client(plan.cluster)
        path = f"{plan.slurm_dir}/images/{digest.replace(':', '-')}.tar"
        have = await slurm.run_raw(["test", "-s", path])
        if have.returncode == 0:
            return path
        self._ctx.sink(Notice(f"copying the image to {plan.cluster.host}:{path}", "status"))
        remote = shlex.join(
            ["sh", "-c", 'mkdir -p "${1%/*}" && cat >"$1.tmp" && mv "$1.tmp" "$1"', "sh", path]
        )
        ssh = shlex.join(plan.cluster.argv(["true"])[:-2])
        pipeline = f"docker save {shlex.quote(image)} | {ssh} -- {shlex.quote(remote)}"
        result = await anyio.run_process(["sh", "-c", pipeline], check=False)
        if result.returncode != 0:
            raise BackendError(
                f"could not copy the image to {plan.cluster.host}: "
                + result.stderr.decode(errors="replace").strip()[-300:]
            )
        return path

    def launch_settings(self, plan: Any) -> object:
        return Settings(plan.max_parallel)

    async def resume(self, jobs: Sequence[JobRecord], *, max_parallel: int | None) -> object:
        for job in jobs:
            if "argv" not in job.spec:
                raise ValidationError(f"job {job.short_id} has no recorded Slurm spec to run again")
        return Settings(max_parallel)

    # -- launch -----------------------------------------------------------------------

    async def launch(self, planned: Sequence[Planned], settings: object, run: Launch) -> None:
        assert isinstance(settings, Settings)
        todo = ours(planned)
        unsure = [p.job for p in todo if p.action == "reconcile" and p.job.details.get("batch")]
        found: dict[str, Update] = {}
        if unsure:
            try:
                found = await self.find_many(unsure)
            except BackendError as exc:
                run.sink(Notice(f"cannot look up earlier submissions: {exc.message}", "warning"))
                return  # nothing is sent twice: they stay PLANNED for the next run
            await run.record(list(found.values()))
            for job in unsure:
                if job.job_id in found:
                    self._tell(run, job, found[job.job_id])
        fresh = [p.job for p in todo if p.job.job_id not in found]
        for group in _groups(fresh):
            per_job = bool(group[0].spec.get("per_job"))
            batches = [[j] for j in group] if per_job else [group]
            for jobs in batches:
                await self._submit(jobs, settings, run)

    async def _submit(self, jobs: Sequence[JobRecord], settings: Settings, run: Launch) -> None:
        current = [j for j in [await run.current(job) for job in jobs] if j is not None]
        if not current:
            return
        first = current[0]
        slurm = self._job_client(first)
        root = str(first.spec.get("slurm_dir"))
        store_id = await self._ctx.store_id()
        batch_id = first.job_id
        plan = SlurmPlan(
            image=first.image,
            resources=recorded_resources(first),
            cluster=slurm.cluster,
            max_parallel=settings.max_parallel,
            per_job=bool(first.spec.get("per_job")),
            docker_args=str_tuple(first.spec.get("docker_args")),
            slurm_dir=root,
            labels=dict(self._ctx.labels),
            run_image=first.image,
            archive=nonempty_str(first.spec.get("archive")),
            runtime=nonempty_str(first.spec.get("runtime")) or "docker",
            bundle=nonempty_str(first.spec.get("bundle")),
            process=dict_or_none(first.spec.get("process")),
        )
        tasks = [spec.Task(j.job_id, str_tuple(j.spec.get("argv"))) for j in current]
        workdir = f"{root}/{_safe(first.xgroup)}/{batch_id}"
        batch = self._batch(
            plan, tasks, xgroup=first.xgroup, store_id=store_id, batch_id=batch_id, workdir=workdir
        )
        # Recorded before sbatch: a re-run looks for this name before sending again.
        await run.record(
            [
                Update(
                    j.job_id,
                    JobState.PLANNED,
                    platform_id=batch.name,
                    details={
                        "batch": batch_id,
                        "task": i,
                        "workdir": workdir,
                        "log": batch.log_path(i if batch.array else 0),
                    },
                )
                for i, j in enumerate(current)
            ]
        )
        try:
            if plan.runtime == "oci":
                await _check_bundle(slurm, plan.bundle)
            await slurm.write(batch.args_path, spec.args_file(tasks))
            await slurm.write(batch.script_path, plan.script(batch))
            array_id = await slurm.sbatch(batch.script_path, workdir)
        except ValidationError as exc:
            await run.record(
                [Update(j.job_id, JobState.FAILED, message=exc.message) for j in current]
            )
            for j in current:
                self._tell(run, j, Update(j.job_id, JobState.FAILED, message=exc.message))
            return
        except BackendError as exc:
            await self._adopt(current, run, exc)
            return
        updates = [
            Update(
                j.job_id,
                JobState.SUBMITTED,
                platform_id=spec.platform_id(array_id, i, array=batch.array),
                details={"array_job_id": array_id},
            )
            for i, j in enumerate(current)
        ]
        await run.record(updates)
        for j, u in zip(current, updates, strict=True):
            self._tell(run, j, u)

    async def _adopt(self, jobs: Sequence[JobRecord], run: Launch, exc: BackendError) -> None:
        """After an sbatch whose answer was lost: the array it may have made,
        looked up by name at once; what is not found stays PLANNED, and a re-run
        looks again before sending anything."""
        recorded = [j for j in [await run.current(job) for job in jobs] if j is not None]
        try:
            found = await self.find_many(recorded)
        except BackendError:
            found = {}
        await run.record(list(found.values()))
        for job in recorded:
            if job.job_id in found:
                self._tell(run, job, found[job.job_id])
        left = len(recorded) - len(found)
        if left:
            run.sink(
                Notice(
                    f"sbatch of {left} job(s) did not answer ({exc.message}); "
                    "a re-run looks them up before submitting again",
                    "warning",
                )
            )

    def _tell(self, run: Launch, job: JobRecord, update: Update) -> None:
        run.sink(
            JobStateChanged(
                job.job_id,
                job_label(job, run.total),
                update.state,
                detail=update.platform_id or update.message,
                argv=job.args,
            )
        )

    # -- after launch -----------------------------------------------------------------

    async def _seen(self, slurm: Slurm, jobs: Sequence[JobRecord]) -> dict[str, Update]:
        """What Slurm says of ``jobs`` of one cluster: one squeue, and the jobcomp
        file only when some job is not in squeue any more."""
        store_id = await self._ctx.store_id()
        live = await slurm.squeue()
        updates = _match(jobs, live, store_id)
        missing = [j for j in jobs if j.job_id not in updates]
        if missing:
            ids = [j.platform_id for j in missing if j.platform_id and j.state.active]
            updates.update(_match(missing, await slurm.finished(ids), None))
        return updates

    async def find_many(self, jobs: Sequence[JobRecord]) -> dict[str, Update]:
        out: dict[str, Update] = {}
        for group in _by_cluster(jobs).values():
            out.update(await self._seen(self._job_client(group[0]), group))
        return out

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        updates: list[Update] = []
        for group in _by_cluster(jobs).values():
            seen = await self._seen(self._job_client(group[0]), group)
            for job in group:
                if job.job_id in seen:
                    updates.append(seen[job.job_id])
                elif job.state is not JobState.PLANNED:
                    updates.append(
                        Update(
                            job.job_id,
                            JobState.UNKNOWN,
                            message=f"Slurm no longer knows {job.platform_id} and keeps no "
                            "record of how it ended",
                        )
                    )
        return updates

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        updates: list[Update] = []
        for group in _by_cluster(jobs).values():
            slurm = self._job_client(group[0])
            ids = sorted({j.platform_id for j in group if j.platform_id and j.state.active})
            names = sorted(
                {
                    spec.job_name(str(j.details["batch"]))
                    for j in group
                    if j.state is JobState.PLANNED and j.details.get("batch")
                }
            )
            if ids:
                result = await slurm.run_raw(["scancel", *ids])
                err = result.stderr.decode(errors="replace")
                if result.returncode != 0 and "already completing or completed" not in err:
                    raise slurm.failure(["scancel"], result, "scancel")
            for name in names:
                await slurm.run(["scancel", f"--name={name}"], what="scancel")
            seen = await self._seen(slurm, group) if ids or names else {}
            for job in group:
                now = seen.get(job.job_id)
                if now is not None and now.state.terminal:
                    updates.append(now)
                else:
                    updates.append(
                        Update(job.job_id, JobState.STOPPED, message="cancelled by caliban stop")
                    )
        return updates

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        path = job.details.get("log")
        if not isinstance(path, str):
            raise ValidationError(f"job {job.short_id} was never submitted to Slurm: it has no log")
        slurm = self._job_client(job)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        offset = 0
        seen = False
        while True:
            got = await slurm.read(path, offset)
            if got is None and not seen and (not follow or job.state.terminal):
                # Not "no output": `results` reads it again next time (a task
                # not started yet, a shared filesystem that has not caught up).
                where = f"{slurm.cluster.host}:" if slurm.cluster.host else ""
                raise BackendError(
                    f"job {job.short_id} has no output file {where}{path}",
                    hint="the task has not started, or never ran (cancelled while pending)",
                )
            seen = seen or got is not None
            data = got or b""
            offset += len(data)
            text = decoder.decode(data)
            if text:
                yield text
            if not follow or job.state.terminal:
                break
            if not data:
                now = await self.refresh([job])
                if now and now[0].state.terminal:
                    follow = False  # one more read for what it wrote last
                    continue
                await anyio.sleep(_POLL)
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest

    def rebind(self, job: JobRecord, job_id: str) -> Rebound:
        return Rebound(spec=dict(job.spec), details={"cluster": job.details.get("cluster")})

    async def leftovers(self) -> Mapping[str, object]:
        return {}

    async def remove(self, handles: Sequence[object]) -> None:
        return None


async def _check_bundle(slurm: Slurm, path: str | None) -> None:
    """A bundle removed since the sweep was first sent (a resubmit) fails its jobs
    here: Slurm would hold them pending forever ("launch failed requeued held")."""
    found = await slurm.run_raw(["test", "-f", f"{path}/{oci.CONFIG}"]) if path else None
    if found is not None and found.returncode == 255 and slurm.cluster.host is not None:
        raise slurm.failure(["test"], found, "checking the OCI bundle")  # ssh: try again later
    if found is None or found.returncode != 0:
        raise ValidationError(
            f"the OCI bundle {path} is gone; submit the sweep again to export the image anew"
        )


def _safe(name: str) -> str:
    """A group name as one path component on the cluster."""
    part = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100]
    return "_" if part.strip(".") == "" else part


def _by_cluster(jobs: Sequence[JobRecord]) -> dict[str, list[JobRecord]]:
    out: dict[str, list[JobRecord]] = {}
    for job in jobs:
        out.setdefault(str(job.details.get("cluster") or "local"), []).append(job)
    return out


def _groups(jobs: Sequence[JobRecord]) -> list[list[JobRecord]]:
    """Jobs that can share one array: same cluster, image and request."""
    out: dict[str, list[JobRecord]] = {}
    for job in jobs:
        key = json.dumps(
            [job.image, {k: v for k, v in job.spec.items() if k != "argv"}],
            sort_keys=True,
            default=str,
        )
        out.setdefault(key, []).append(job)
    return list(out.values())


def _match(
    jobs: Sequence[JobRecord], seen: Sequence[states.Seen], store_id: str | None
) -> dict[str, Update]:
    """Updates for ``jobs`` found in ``seen``: by platform id once submitted, by
    batch name and task while the submission is unconfirmed."""
    by_key = {s.key: s for s in seen}
    # The jobcomp file keeps no comment (store_id None there); batch ids are job ids, unique anyway.
    by_batch = {
        (s.name, s.task): s
        for s in seen
        if store_id is None or (spec.comment_labels(s.comment) or {}).get("store") == store_id
    }
    out: dict[str, Update] = {}
    for job in jobs:
        hit: states.Seen | None = None
        if job.platform_id and job.state is not JobState.PLANNED:
            hit = by_key.get(job.platform_id)
        elif job.details.get("batch"):
            task = job.details.get("task")
            index = task if isinstance(task, int) and not job.spec.get("per_job") else None
            hit = by_batch.get((spec.job_name(str(job.details["batch"])), index))
        if hit is None:
            continue
        st = hit.status
        out[job.job_id] = Update(
            job.job_id,
            st.state,
            exit_code=st.exit_code,
            message=st.message,
            platform_id=hit.key,
            details={"array_job_id": hit.array_job_id, "slurm_state": st.slurm_state},
        )
    return out


__all__ = ["SlurmPlatform"]
