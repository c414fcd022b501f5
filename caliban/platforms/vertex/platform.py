"""``caliban cloud``: Vertex AI custom jobs, one per experiment.

Every flag is checked without the network (:func:`caliban.platforms.vertex.plan.check`);
one token request proves the credentials before anything is built; the image is
pushed once per region's registry; jobs go through the shared fan-out, paced to
the project's quota per region. A job whose create may have happened is found
by its job-id label before anything is sent again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import anyio
import anyio.lowlevel

from caliban.adapters.build import BuiltImage
from caliban.adapters.cloud import registry
from caliban.adapters.cloud.http import GoogleApi
from caliban.adapters.store import Planned
from caliban.core import experiment
from caliban.errors import ValidationError
from caliban.events import Document, Notice
from caliban.limits import Pacing
from caliban.options import CloudRequest
from caliban.platforms.base import Context, JobSpec, Launch, Prepared, Published, Rebound, Row
from caliban.platforms.vertex import cloudlog
from caliban.platforms.vertex import ladder as vertexladder
from caliban.platforms.vertex import plan as vertexplan
from caliban.platforms.vertex import scheduling as vertexsched
from caliban.platforms.vertex.client import VertexBackend, VertexClient, VertexSubmitter
from caliban.platforms.vertex.plan import (
    CloudPlan,
    _body,
    _number,
    _opt,
    check,
    rebind,
)
from caliban.spec import JobRecord, Update
from caliban.spec import Platform as Kind


@dataclass(frozen=True)
class VertexPlacement:
    """Where a Vertex job goes and how its submission is paced, as recorded."""

    project: str
    region: str
    mode: str
    rate_limit: float
    max_inflight: int
    endpoint: str | None = None
    cloud_key: str | None = None

    def to_details(self) -> dict[str, object]:
        details: dict[str, object] = {
            "project": self.project,
            "region": self.region,
            "mode": self.mode,
            # resubmit paces itself as this submission did
            "rate_limit": self.rate_limit,
            "max_inflight": self.max_inflight,
        }
        if self.endpoint:
            details["endpoint"] = self.endpoint
        if self.cloud_key:
            details["cloud_key"] = self.cloud_key
        return details

    @classmethod
    def from_details(cls, details: Mapping[str, object]) -> VertexPlacement:
        return cls(
            project=str(details.get("project") or ""),
            region=str(details.get("region") or ""),
            mode=str(details.get("mode") or ""),
            rate_limit=_number(details.get("rate_limit"), 60.0),
            max_inflight=int(_number(details.get("max_inflight"), 16)),
            endpoint=_opt(details.get("endpoint")),
            cloud_key=_opt(details.get("cloud_key")),
        )


@dataclass(frozen=True)
class VertexSettings:
    """Pacing of a launch; None: as each job's submission was paced."""

    rate_limit: float | None = None
    max_inflight: int | None = None
    #: ``--cloud_key`` of a resubmission, over the key each job recorded.
    cloud_key: str | None = None


@dataclass(frozen=True)
class VertexPlan:
    request: CloudRequest
    plan: CloudPlan

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
        plan, req = self.plan, self.request
        for row in rows:
            region = plan.regions[row.index % len(plan.regions)]
            body = _body(
                plan,
                req,
                index=row.index,
                job_id=row.job_id,
                store_id=store_id,
                xgroup=xgroup,
                image=images[region],
                argv=row.argv,
                commit=commit,
            )
            placement = VertexPlacement(
                plan.project_id,
                region,
                plan.mode.value,
                req.rate_limit,
                req.max_inflight,
                plan.endpoint,
                plan.key_file,
            )
            details = placement.to_details()
            if plan.ladder:
                steps = vertexsched.ladder_steps(
                    plan.ladder, plan.regions, start=row.index % len(plan.regions)
                )
                region, rung = steps[0]
                body = vertexladder.with_placement(
                    body, rung.scheduling(plan.placement), image=images[region]
                )
                details.update(
                    region=region,
                    rung=str(rung),
                    step=0,
                    attempt=1,
                    queue_timeout_s=plan.queue_timeout_s,
                    ladder=[{"region": r, "rung": str(g), "image": images[r]} for r, g in steps],
                )
            yield JobSpec(row, body, details, images[region])

    def spec_key(self, published: Published) -> str:
        return f"vertex:{published.image}"

    def record(self, published: Published) -> dict[str, object]:
        record: dict[str, object] = {"platform": "vertex"}
        if len(set(published.images.values())) > 1:
            record["images"] = dict(published.images)
        return record


class VertexPlatform:
    """Vertex AI custom jobs."""

    kind = Kind.VERTEX
    remote = True
    keeps_logs = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def check(self, request: CloudRequest, prepared: Prepared, xgroup: str) -> VertexPlan:
        if prepared.spec.entry is None and request.image_tag is None:
            raise ValidationError("caliban cloud needs a script or module to run")
        plan = check(
            request,
            mode=prepared.mode,
            config=prepared.config,
            user=self.ctx.user_name,
            environ=self.ctx.environ,
            user_config=self.ctx.user_config,
        )
        return VertexPlan(request, plan)

    async def preview(
        self,
        plan: VertexPlan,
        config: experiment.Config,
        *,
        total: int,
        xgroup: str,
        prepared: Prepared,
    ) -> None:
        image = plan.image or f"<{prepared.repo} pushed by digest>"
        requests = []
        rows = (
            Row(i, dict(exp), "<job id>", tuple(experiment.to_argv(exp, plan.request.script_args)))
            for i, exp in enumerate(experiment.expand(config))
        )
        images = dict.fromkeys(plan.plan.regions, image)
        for job in plan.jobs(rows, total=total, xgroup=xgroup, store_id="<store>", images=images):
            region = str(job.details["region"])
            requests.append(
                {
                    "parent": f"projects/{plan.plan.project_id}/locations/{region}",
                    "customJob": job.spec,
                }
            )
            await anyio.lowlevel.checkpoint()  # Ctrl-C gets through a long listing
        # One JSON array, one element per job, so the output can be piped to jq.
        self.ctx.sink(Document(json.dumps(requests, indent=2)))
        self.ctx.sink(
            Notice(
                f"dry run: {total} Vertex job(s) in {xgroup}; nothing was built, "
                "pushed, submitted or recorded",
                level="status",
            )
        )

    async def preflight(self, plan: VertexPlan, prepared: Prepared) -> None:
        creds = await self.ctx.credentials(plan.plan.key_file)
        await creds.token()  # bad credentials: one clear error before anything is built

    def push_key(self, plan: VertexPlan) -> str | None:
        return plan.plan.key_file

    async def publish(
        self, plan: VertexPlan, prepared: Prepared, built: BuiltImage | None
    ) -> Published:
        regions = plan.plan.regions
        if built is None:
            image = str(plan.image)
            return Published(image, image, dict.fromkeys(regions, image))
        # Every region pulls from a registry it can reach: its own.
        targets = registry.region_targets(
            regions,
            prefix=self.ctx.text_setting("image_registry", plan.request.image_registry),
            project=plan.plan.project_id,
            repository=plan.request.artifact_repo,
            image=prepared.repo,
            tag=built.tag.split(":")[-1],
        )
        creds = await self.ctx.credentials(plan.plan.key_file)
        pushed: dict[registry.Target, str] = {}
        for target in targets.values():
            if target not in pushed:
                pushed[target] = await registry.push(
                    await self.ctx.docker(),
                    await self.ctx.http(),
                    image=built.tag,
                    target=target,
                    credentials=creds,
                    sink=self.ctx.sink,
                )
        images = {region: pushed[target] for region, target in targets.items()}
        return Published(images[regions[0]], built.digest, images)

    def launch_settings(self, plan: VertexPlan) -> VertexSettings:
        return VertexSettings(plan.request.rate_limit, plan.request.max_inflight)

    async def resume(
        self, jobs: Sequence[JobRecord], *, max_parallel: int | None
    ) -> VertexSettings:
        return VertexSettings(cloud_key=self.ctx.cloud_key)

    async def launch(self, planned: Sequence[Planned], settings: object, run: Launch) -> None:
        assert isinstance(settings, VertexSettings)
        # Jobs submitted with other credentials or to another endpoint go in
        # their own fan-out, each paced as it was first submitted.
        groups: dict[tuple[str | None, str | None], list[Planned]] = {}
        for p in planned:
            where = VertexPlacement.from_details(p.job.details)
            groups.setdefault((where.cloud_key, where.endpoint), []).append(p)
        for (key_file, endpoint), group in groups.items():
            placements = [VertexPlacement.from_details(p.job.details) for p in group]
            api = GoogleApi(
                await self.ctx.http(),
                await self.ctx.credentials(settings.cloud_key or key_file),
                timeout=vertexplan.REQUEST_TIMEOUT,
            )
            pacing = Pacing(
                rate_per_minute=settings.rate_limit or min(p.rate_limit for p in placements),
                max_inflight=settings.max_inflight or min(p.max_inflight for p in placements),
                policy=vertexplan.RETRY_POLICY,  # read late: tests shorten it
            )
            await run.fan_out(group, VertexSubmitter(VertexClient(api, endpoint)), pacing=pacing)

    def relocate(
        self, job: JobRecord, *, job_id: str, now: datetime, max_recoveries: int = 0
    ) -> Rebound | None:
        """The next attempt of a job that waited too long, expired, found no
        capacity or was preempted (caliban.platforms.vertex.ladder); None: stay."""
        why = vertexladder.reason(job, now=now, max_recoveries=max_recoveries)
        if why is None:
            return None
        body, details = vertexladder.moved(
            job, why, job_id=job_id, base=vertexladder.base_of(job.spec)
        )
        return Rebound(rebind(body, job_id), details)

    def rebind(self, job: JobRecord, job_id: str) -> Rebound:
        details = {k: v for k, v in job.details.items() if k != "console_url"}
        return Rebound(rebind(job.spec, job_id), details)

    async def _backend(self, jobs: Sequence[JobRecord]) -> VertexBackend:
        # --cloud_key, else the key the jobs were submitted with while it still
        # exists, else $GOOGLE_APPLICATION_CREDENTIALS / ADC / the metadata server.
        key = self.ctx.cloud_key
        for job in jobs if key is None else ():
            recorded = str(job.details.get("cloud_key") or "")
            if recorded and await anyio.Path(recorded).is_file():
                key = recorded
                break
        api = GoogleApi(await self.ctx.http(), await self.ctx.credentials(key))
        reader = cloudlog.LogReader(api, self.ctx.environ.get(cloudlog.ENDPOINT_ENV) or None)
        return VertexBackend(api, store_id=await self.ctx.store_id(), reader=reader)

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        return await (await self._backend(jobs)).refresh(jobs)

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        return await (await self._backend(jobs)).cancel(jobs)

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        async for chunk in (await self._backend([job])).logs(job, follow=follow):
            yield chunk

    async def tails(self, jobs: Sequence[JobRecord], lines: int) -> dict[str, list[str]]:
        return await (await self._backend(jobs)).tails(jobs, lines)

    async def leftovers(self) -> Mapping[str, object]:
        return {}  # Vertex removes what its jobs held

    async def remove(self, handles: Sequence[object]) -> None:
        return None
