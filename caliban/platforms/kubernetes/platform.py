"""``caliban cluster job submit``: Kubernetes Jobs, on GKE or any cluster.

Flags, specs and the kubeconfig are checked without contacting a cluster
(:func:`caliban.platforms.kubernetes.plan.check`); ``--dry_run`` prints the
manifests and ``--export`` writes them. Before anything is built the cluster
is reached once (namespace, server version, a GKE cluster's GPU limits). Jobs
go one per experiment through the shared fan-out, or, with ``--indexed``, as
one Indexed Job whose ConfigMap maps each completion index to its experiment
(a launch strategy of this platform: :func:`caliban.platforms.kubernetes.jobs.submit_indexed`).
Job names are derived from job ids, so a create whose answer was lost is
found by name before anything is sent again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import anyio.lowlevel
import yaml

from caliban.adapters.build import BuiltImage
from caliban.adapters.store import Planned
from caliban.core import experiment
from caliban.errors import BackendError, OutcomeUnknown
from caliban.events import Document, JobStateChanged, Notice
from caliban.limits import Pacing
from caliban.options import ClusterJobRequest
from caliban.platforms.base import Context, JobSpec, Launch, Prepared, Published, Rebound, Row
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes.client import connections
from caliban.platforms.kubernetes.jobs import (
    KubeBackend,
    KubeSubmitter,
    indexed_groups,
    submit_indexed,
    target_of,
)
from caliban.platforms.kubernetes.plan import (
    _INDEXED_KEYS,
    ClusterPlan,
    _check_gpu_limits,
    _check_version,
    _export,
    _indexed_pair,
    _manifests,
    _pacing,
    _spec_key,
    check,
    manifest_for,
    push,
    shape_of,
)
from caliban.platforms.kubernetes.spec import ClusterTarget
from caliban.spec import JobRecord, JobState, Update
from caliban.spec import Platform as Kind


@dataclass(frozen=True)
class IndexedSlot:
    """Where an experiment sits in an Indexed Job."""

    job: str
    completion_index: int
    entry: tuple[str, ...]
    parallelism: int | None


@dataclass(frozen=True)
class KubePlacement:
    """The cluster, Job name and mode of a Kubernetes job, as recorded."""

    cluster: ClusterTarget
    k8s_job: str
    mode: str
    indexed: IndexedSlot | None = None

    def to_details(self) -> dict[str, object]:
        details: dict[str, object] = {
            "cluster": self.cluster.to_details(),
            "k8s_job": self.k8s_job,
            "mode": self.mode,
        }
        if self.indexed is not None:
            details.update(
                indexed_job=self.indexed.job,
                completion_index=self.indexed.completion_index,
                entry=list(self.indexed.entry),
                parallelism=self.indexed.parallelism,
            )
        return details


@dataclass(frozen=True)
class KubeSettings:
    pacing: Pacing


@dataclass(frozen=True)
class KubePlan:
    request: ClusterJobRequest
    plan: ClusterPlan
    mode: str

    @property
    def image(self) -> str | None:
        return self.request.image_tag

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
        shape = shape_of(self.plan, self.request, image=image, xgroup=xgroup)
        group: str | None = None
        for row in rows:
            manifest = manifest_for(
                self.plan,
                shape,
                xgroup=xgroup,
                store_id=store_id,
                job_id=row.job_id,
                argv=row.argv,
                commit=commit,
            )
            slot = None
            if self.request.indexed:
                if group is None:  # named after the sweep's first job
                    reserve = k8sspec.index_reserve(total)
                    group = k8sspec.job_name(self.plan.prefix, row.job_id, reserve=reserve)
                slot = IndexedSlot(group, row.index, self.plan.entry, self.request.max_parallel)
            placement = KubePlacement(
                self.plan.target, manifest["metadata"]["name"], self.mode, slot
            )
            yield JobSpec(row, manifest, placement.to_details(), image)

    def spec_key(self, published: Published) -> str:
        return _spec_key(self.plan, self.request, published.image)

    def record(self, published: Published) -> dict[str, object]:
        return {"platform": "gke"}


class KubernetesPlatform:
    """Kubernetes Jobs, each on the cluster and namespace it was submitted to."""

    kind = Kind.GKE
    remote = True
    keeps_logs = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def check(self, request: ClusterJobRequest, prepared: Prepared, xgroup: str) -> KubePlan:
        plan = await check(self.ctx, request, prepared)
        return KubePlan(request, plan, prepared.mode.value)

    async def preview(
        self,
        plan: KubePlan,
        config: experiment.Config,
        *,
        total: int,
        xgroup: str,
        prepared: Prepared,
    ) -> None:
        req = plan.request
        image = req.image_tag or f"<{prepared.repo} pushed by digest>"
        rows = _manifests(plan.plan, req, image=image, xgroup=xgroup, store_id=None, config=config)
        groups = (
            [list(_indexed_pair(plan.plan, req, rows))] if req.indexed else [[r[4]] for r in rows]
        )
        if req.export:
            for path in await _export(req, groups):
                self.ctx.sink(Notice(f"wrote {path}"))
            return
        # One YAML stream, a document per object, as `kubectl apply -f -` reads it.
        documents = []
        for objects in groups:
            for obj in objects:
                documents.append(yaml.safe_dump(obj, sort_keys=False, explicit_start=True))
                await anyio.lowlevel.checkpoint()  # Ctrl-C gets through a long listing
        self.ctx.sink(Document("".join(documents)))
        target = plan.plan.target
        self.ctx.sink(
            Notice(
                f"dry run: {total} job(s) in {xgroup} for {target.display}, "
                f"namespace {target.namespace}; nothing was built, pushed, "
                "submitted or recorded",
                level="status",
            )
        )

    async def preflight(self, plan: KubePlan, prepared: Prepared) -> None:
        target = plan.plan.target
        kube = await (await connections(self.ctx)).client(target)
        await kube.check(target.namespace)
        await _check_version(self.ctx, plan.plan, plan.request)
        if target.kind == "gke" and plan.plan.placement.gpu is not None and not plan.request.force:
            await _check_gpu_limits(self.ctx, plan.plan)

    def push_key(self, plan: KubePlan) -> str | None:
        return plan.plan.target.cloud_key or plan.request.cluster.cloud_key

    async def publish(
        self, plan: KubePlan, prepared: Prepared, built: BuiltImage | None
    ) -> Published:
        if built is None:
            image = str(plan.image)
        else:
            image = await push(self.ctx, plan.request, prepared, plan.plan, built)
        return Published(image, image.rsplit("@", 1)[-1], {"": image})

    def launch_settings(self, plan: KubePlan) -> KubeSettings:
        return KubeSettings(_pacing(plan.request))

    async def resume(self, jobs: Sequence[JobRecord], *, max_parallel: int | None) -> KubeSettings:
        for target in sorted({target_of(j).display for j in jobs}):
            self.ctx.sink(Notice(f"resubmitting to {target}"))
        return KubeSettings(Pacing(rate_per_minute=1e9, max_inflight=64))

    async def launch(self, planned: Sequence[Planned], settings: object, run: Launch) -> None:
        """Plain Jobs through the shared fan-out; each Indexed group with one create."""
        assert isinstance(settings, KubeSettings)
        conns = await connections(self.ctx)
        plain = [p for p in planned if not p.job.details.get("indexed_job")]
        grouped = [p for p in planned if p.job.details.get("indexed_job")]
        if plain:
            await run.fan_out(plain, KubeSubmitter(conns), pacing=settings.pacing)
        reconcile = {p.job.job_id for p in grouped if p.action == "reconcile"}
        for name, group in indexed_groups([p.job for p in grouped]).items():
            parallelism = group[0].details.get("parallelism")
            try:
                kube = await conns.client(target_of(group[0]))
                await submit_indexed(
                    kube,
                    group,
                    parallelism=int(str(parallelism)) if parallelism else None,
                    reconcile=any(j.job_id in reconcile for j in group),
                    run=run,
                    policy=settings.pacing.policy,
                )
            except BackendError as exc:
                await self._indexed_failed(run, name, group, exc)

    async def _indexed_failed(
        self, run: Launch, name: str, group: Sequence[JobRecord], exc: BackendError
    ) -> None:
        if isinstance(exc, OutcomeUnknown) or exc.retryable:
            # It may exist: stay PLANNED, so the next status or re-run looks it up.
            run.sink(
                Notice(
                    f"Indexed Job {name}: outcome unknown ({exc.message}); "
                    "it will be looked up again",
                    level="warning",
                )
            )
            return
        await run.record([Update(j.job_id, JobState.FAILED, message=exc.message) for j in group])
        for job in group:
            run.sink(
                JobStateChanged(
                    job.job_id,
                    f"{job.index + 1}",
                    JobState.FAILED,
                    detail=exc.message,
                    argv=job.args,
                )
            )

    def rebind(self, job: JobRecord, job_id: str) -> Rebound:
        """A new Job with the recorded manifest, renamed for the new job id; an
        experiment of an Indexed sweep comes back as a Job of its own."""
        manifest = k8sspec.rebind(job.spec, prefix=k8sspec.name_prefix(job.spec), job_id=job_id)
        details = {k: v for k, v in job.details.items() if k not in _INDEXED_KEYS}
        details["k8s_job"] = manifest["metadata"]["name"]
        return Rebound(manifest, details)

    async def _backend(self) -> KubeBackend:
        return KubeBackend(
            await connections(self.ctx), store_id=await self.ctx.store_id(), sink=self.ctx.sink
        )

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        return await (await self._backend()).refresh(jobs)

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        return await (await self._backend()).cancel(jobs)

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        async for chunk in (await self._backend()).logs(job, follow=follow):
            yield chunk

    async def leftovers(self) -> Mapping[str, object]:
        return {}  # a finished Job's pods go with it (ttlSecondsAfterFinished)

    async def remove(self, handles: Sequence[object]) -> None:
        return None
