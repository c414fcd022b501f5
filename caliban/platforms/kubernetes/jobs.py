"""Jobs as Kubernetes batch/v1 Jobs, on GKE or any cluster.

Submission: :class:`KubeSubmitter` plugs into the shared fan-out engine
(:func:`caliban.sweep.fanout.submit_all`); Job names are deterministic, so a create that
answers 409 is the same job already submitted and is adopted (after checking its
``caliban.dev/job`` label). :func:`submit_indexed` sends a whole sweep as one
Indexed Job plus the ConfigMap of its arguments.

:class:`KubeBackend` answers status/stop/logs with one labelled list per cluster
and namespace, whatever the number of jobs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

from caliban.errors import BackendError, CalibanError, OutcomeUnknown
from caliban.events import JobStateChanged, Notice, RetryScheduled, Sink, discard
from caliban.limits import RetryPolicy, with_retries
from caliban.platforms.base import Launch, Update, job_label
from caliban.platforms.kubernetes import gkespec
from caliban.platforms.kubernetes import spec as k8sspec
from caliban.platforms.kubernetes import versions as k8sversions
from caliban.platforms.kubernetes.client import KubeClient, KubeConnections
from caliban.platforms.kubernetes.spec import ClusterTarget
from caliban.spec import JobRecord, JobState


def target_of(job: JobRecord) -> ClusterTarget:
    recorded = job.details.get("cluster")
    return ClusterTarget.from_details(recorded if isinstance(recorded, dict) else {})


def namespace_of(job: JobRecord) -> str:
    return target_of(job).namespace


def name_of(job: JobRecord) -> str:
    """The Job this caliban job is (or is part of)."""
    indexed = job.details.get("indexed_job")
    if indexed:
        return str(indexed)
    return str(job.details.get("k8s_job") or job.spec["metadata"]["name"])  # type: ignore[index]


def index_of(job: JobRecord) -> int | None:
    value = job.details.get("completion_index")
    return int(str(value)) if job.details.get("indexed_job") and value is not None else None


def owner_id(name: str) -> str:
    """The caliban job id a Job name was made from (``<prefix>-<job id>``)."""
    return name.rsplit("-", 1)[-1]


def console_url(target: ClusterTarget, name: str) -> str | None:
    if target.kind != "gke" or not (target.project and target.location and target.cluster):
        return None
    return gkespec.job_url(target.project, target.location, target.cluster, target.namespace, name)


def _adopt(found: dict[str, Any], expected: str, name: str, *, kind: str = "Job") -> None:
    labels = (found.get("metadata") or {}).get("labels") or {}
    if labels.get(k8sspec.JOB_LABEL) != expected:
        raise BackendError(
            f"a {kind} named {name} already exists and is not caliban job {expected}",
            hint=f"delete it (kubectl delete {kind.lower()} {name}) or submit with another --name",
        )


async def _own(
    client: KubeClient,
    ns: str,
    name: str,
    job: dict[str, Any],
    policy: RetryPolicy,
    sink: Sink,
) -> None:
    """Make the ConfigMap a dependent of its Job. The Job exists and runs whatever
    happens here, so a failure is a warning, never a failed submission."""
    uid = str((job.get("metadata") or {}).get("uid") or "")
    try:
        if not uid:
            found = await client.read_job(ns, name)
            uid = str(((found or {}).get("metadata") or {}).get("uid") or "")
        if uid:
            patch = k8sspec.owned_by(name, uid)
            await with_retries(lambda: client.patch_configmap(ns, name, patch), policy)
            return
        reason = "the Job has no uid"
    except BackendError as exc:
        reason = exc.message
    sink(
        Notice(
            f"ConfigMap {name} could not be tied to its Job ({reason}); it will not be "
            f"deleted with the Job: kubectl delete configmap {name} once the sweep is done",
            level="warning",
        )
    )


class KubeSubmitter:
    """Creates one Job per caliban job; finds it again by its deterministic name."""

    def __init__(self, connections: KubeConnections) -> None:
        self.connections = connections
        self._targets: dict[str, ClusterTarget] = {}

    def _target(self, job: JobRecord) -> ClusterTarget:
        target = self._targets.get(job.job_id)
        if target is None:
            target = self._targets[job.job_id] = target_of(job)
        return target

    def quota_key(self, job: JobRecord) -> str:
        target = self._target(job)
        return f"{target.key}/{target.namespace}"

    def _accepted(self, job: JobRecord, obj: dict[str, Any]) -> Update:
        target = self._target(job)
        name = str(obj["metadata"]["name"])
        state, _ = k8sspec.job_state(obj)
        url = console_url(target, name)
        details: dict[str, object] = {"k8s_job": name}
        if url:
            details["console_url"] = url
        return Update(
            job.job_id,
            platform_id=name,
            details=details,
            state=JobState.SUBMITTED if state is JobState.SUBMITTED else state,
            url=url,
        )

    async def create(self, job: JobRecord) -> Update:
        target = self._target(job)
        client = await self.connections.client(target)
        try:
            # A new Job has no status yet: its name is all that is needed back. The body
            # is the text the store recorded, sent as it is.
            await client.create_job(
                target.namespace, job.spec, want_body=False, encoded=job.spec_json()
            )
        except BackendError as exc:
            if exc.status != 409:
                raise
            found = await self.find(job)
            if found is None:  # deleted between the 409 and the read: try again
                raise BackendError(exc.message, retryable=True) from exc
            return found
        # Sent suspended (a Kueue queue), it is held until admitted: QUEUED at once.
        sent = {**job.spec, "metadata": {**job.spec["metadata"], "name": name_of(job)}}  # type: ignore[dict-item]
        return self._accepted(job, sent)

    async def find(self, job: JobRecord) -> Update | None:
        target = self._target(job)
        client = await self.connections.client(target)
        name = name_of(job)
        found = await client.read_job(target.namespace, name)
        if found is None:
            return None
        _adopt(found, job.job_id, name)
        return self._accepted(job, found)

    async def find_many(self, jobs: Sequence[JobRecord]) -> dict[str, Update]:
        """Which of ``jobs`` exist, with one list call per cluster and namespace
        (the Jobs of this store, by label) instead of one read per job."""
        groups: dict[tuple[str, str], list[JobRecord]] = {}
        for job in jobs:
            target = self._target(job)
            groups.setdefault((target.key, target.namespace), []).append(job)
        out: dict[str, Update] = {}
        for (_, namespace), group in groups.items():
            meta = group[0].spec.get("metadata")
            labels = meta.get("labels") if isinstance(meta, dict) else None
            store_id = str(labels.get(k8sspec.STORE_LABEL, "")) if isinstance(labels, dict) else ""
            if not store_id:
                continue
            client = await self.connections.client(self._target(group[0]))
            listed = await client.list_jobs(namespace, f"{k8sspec.STORE_LABEL}={store_id}")
            by_name = {str(j["metadata"]["name"]): j for j in listed}
            for job in group:
                found = by_name.get(name_of(job))
                if found is not None:
                    _adopt(found, job.job_id, name_of(job))
                    out[job.job_id] = self._accepted(job, found)
        return out


# -- indexed sweeps ------------------------------------------------------------------------------


def indexed_groups(jobs: Sequence[JobRecord]) -> dict[str, list[JobRecord]]:
    """Jobs by the Indexed Job they belong to, in completion-index order."""
    groups: dict[str, list[JobRecord]] = {}
    for job in jobs:
        groups.setdefault(name_of(job), []).append(job)
    for group in groups.values():
        group.sort(key=lambda j: (int(str(j.details.get("completion_index", 0))), j.index))
    return groups


async def submit_indexed(
    client: KubeClient,
    group: Sequence[JobRecord],
    *,
    parallelism: int | None,
    reconcile: bool,
    run: Launch,
    policy: RetryPolicy | None = None,
) -> None:
    """Create (or adopt) the ConfigMap of ``group`` and then its Indexed Job; record
    every experiment SUBMITTED with its final completion index.

    The index of each experiment is its position in ``group``; ``group`` comes in
    the same order every time it is reconciled, so a ConfigMap written by an earlier,
    interrupted attempt maps the same indexes to the same experiments.

    Order, and what an interruption leaves: the ConfigMap is created and confirmed
    first, so no pod ever waits for it; then the Job; then the ConfigMap is made the
    Job's dependent (its uid exists only now), so Kubernetes deletes it with the Job.
    Interrupted after the ConfigMap, a re-run finds no Job: it adopts that ConfigMap
    if it holds the same arguments, replaces it otherwise (nothing reads it yet), and
    goes on. Interrupted after the Job, a re-run adopts the Job, creates the ConfigMap
    if an older caliban left none, and sets the owner.
    """
    first = group[0]
    sink, total = run.sink, run.total
    target = target_of(first)
    ns = target.namespace
    name = name_of(first)
    owner = owner_id(name)
    entry = [str(a) for a in first.details.get("entry") or []]  # type: ignore[attr-defined]
    job_manifest = k8sspec.indexed_manifest(
        first.spec,
        name=name,
        first_job_id=owner,
        completions=len(group),
        parallelism=parallelism,
        entry_command=entry,
    )
    k8sversions.check_server(await client.server_version(), [job_manifest], where=target.display)
    entries = [k8sspec.IndexEntry(j.job_id, j.args) for j in group]
    args_map = k8sspec.configmap(name, entries, job_manifest["metadata"]["labels"])
    label = job_label(first, total or len(group))
    # An earlier, interrupted attempt may have created either: look before creating.
    map_uncertain = reconcile
    job_uncertain = False  # a reconciled Job is looked up first, below

    async def find_job() -> dict[str, Any] | None:
        found = await client.read_job(ns, name)
        if found is not None:
            _adopt(found, owner, name)
        return found

    async def ensure_configmap(job_exists: bool) -> None:
        nonlocal map_uncertain
        if map_uncertain:
            found = await client.read_configmap(ns, name)
            if found is not None:
                _adopt(found, owner, name, kind="ConfigMap")
                # A running Job's pods read the one they have (with its stop marks).
                if job_exists or k8sspec.same_arguments(found, args_map):
                    return
                await client.delete_configmap(ns, name)
            map_uncertain = False
        try:
            await client.create_configmap(ns, args_map)
        except OutcomeUnknown:
            map_uncertain = True
            raise
        except BackendError as exc:
            if exc.status != 409:
                raise
            map_uncertain = True
            raise BackendError(exc.message, retryable=True) from exc

    async def ensure_job() -> dict[str, Any]:
        nonlocal job_uncertain
        if job_uncertain:
            found = await find_job()
            if found is not None:
                return found
            job_uncertain = False
        try:
            return await client.create_job(ns, job_manifest)
        except OutcomeUnknown:
            job_uncertain = True
            raise
        except BackendError as exc:
            if exc.status != 409:
                raise
            job_uncertain = True
            raise BackendError(exc.message, retryable=True) from exc

    def on_retry(number: int, delay: float, exc: BaseException) -> None:
        reason = exc.message if isinstance(exc, BackendError) else str(exc)
        sink(RetryScheduled(first.job_id, number, delay, reason))

    policy = policy or RetryPolicy()
    existing = await with_retries(find_job, policy, on_retry=on_retry) if reconcile else None
    adopted = existing is not None
    await with_retries(lambda: ensure_configmap(adopted), policy, on_retry=on_retry)
    if existing is None:
        try:
            existing = await with_retries(ensure_job, policy, on_retry=on_retry)
        except BackendError as exc:
            if not (isinstance(exc, OutcomeUnknown) or exc.retryable):
                # Refused for good: no Job will ever read it.
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await client.delete_configmap(ns, name)
            raise
    await _own(client, ns, name, existing, policy, sink)
    url = console_url(target, name)
    # Held by Kueue until its one Workload is admitted; otherwise its pods are coming.
    held = k8sspec.job_state(existing)[0] is JobState.QUEUED
    state = JobState.QUEUED if held else JobState.SUBMITTED
    changes: list[Update] = []
    for i, job in enumerate(group):
        details: dict[str, object] = {"completion_index": i, "k8s_job": name}
        if url:
            details["console_url"] = url
        changes.append(Update(job.job_id, state, platform_id=f"{name}/{i}", details=details))
    await run.record(changes)
    sink(Notice(f"Indexed Job {name}: {len(group)} experiment(s) in one Job ({label})"))
    for job in group:
        sink(
            JobStateChanged(
                job.job_id,
                job_label(job, total or len(group)),
                state,
                detail=url or name,
                argv=job.args,
            )
        )


# -- status, stop, logs ------------------------------------------------------------------------


def _missing(job: JobRecord) -> Update | None:
    if job.state is JobState.PLANNED:
        return None  # maybe never sent: resubmit or a re-run looks it up
    return Update(
        job.job_id,
        JobState.UNKNOWN,
        message="not on the cluster any more (deleted, or removed by its TTL)",
    )


class KubeBackend:
    """status / stop / logs for Kubernetes jobs, each on the cluster it went to."""

    def __init__(
        self,
        connections: KubeConnections,
        *,
        store_id: str,
        sink: Sink = discard,
        max_inflight: int = 16,
    ) -> None:
        self.connections = connections
        self.store_id = store_id
        self.sink = sink
        self.max_inflight = max_inflight

    def _groups(self, jobs: Sequence[JobRecord]) -> dict[tuple[str, str], list[JobRecord]]:
        groups: dict[tuple[str, str], list[JobRecord]] = {}
        for job in jobs:
            target = target_of(job)
            groups.setdefault((target.key, target.namespace), []).append(job)
        return groups

    async def _survey(
        self, client: KubeClient, ns: str, group: Sequence[JobRecord]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, set[int]]]:
        """One list of this store's Jobs in ``ns``; and, only while an Indexed sweep
        is unfinished, one list of its running pods (the Job counts them, but does
        not say which indexes they are)."""
        listed = await client.list_jobs(ns, f"{k8sspec.STORE_LABEL}={self.store_id}")
        by_name = {str(j["metadata"]["name"]): j for j in listed}
        running: dict[str, set[int]] = {}
        open_indexed = [
            name_of(j)
            for j in group
            if index_of(j) is not None
            and name_of(j) in by_name
            and not k8sspec.job_state(by_name[name_of(j)])[0].terminal
        ]
        if open_indexed:
            pods = await client.list_pods(
                ns,
                f"{k8sspec.STORE_LABEL}={self.store_id},{k8sspec.INDEXED_LABEL}=true",
                fields="status.phase=Running",
            )
            for pod in pods:
                labels = pod["metadata"].get("labels") or {}
                # The label needs 1.28; the annotation of the same name is older.
                annotations = pod["metadata"].get("annotations") or {}
                index = labels.get(k8sspec.INDEX_LABEL, annotations.get(k8sspec.INDEX_LABEL))
                if index is not None and labels.get(k8sspec.JOB_NAME_LABEL):
                    running.setdefault(labels[k8sspec.JOB_NAME_LABEL], set()).add(int(index))
        return by_name, running

    @staticmethod
    def _updates(
        group: Sequence[JobRecord], by_name: dict[str, dict[str, Any]], running: dict[str, set[int]]
    ) -> list[Update]:
        updates: list[Update] = []
        for job in group:
            name = name_of(job)
            remote = by_name.get(name)
            if remote is None:
                if (missing := _missing(job)) is not None:
                    updates.append(missing)
                continue
            index = index_of(job)
            if index is None:
                labels = remote["metadata"].get("labels") or {}
                if labels.get(k8sspec.JOB_LABEL) != job.job_id:
                    if (missing := _missing(job)) is not None:
                        updates.append(missing)
                    continue
                state, message = k8sspec.job_state(remote)
                updates.append(Update(job.job_id, state, message=message, platform_id=name))
            else:
                state, message = k8sspec.index_states(remote, [index], running.get(name, ()))[index]
                updates.append(
                    Update(job.job_id, state, message=message, platform_id=f"{name}/{index}")
                )
        return updates

    async def refresh(self, jobs: Sequence[JobRecord]) -> list[Update]:
        updates: list[Update] = []
        for (_, ns), group in self._groups(jobs).items():
            target = target_of(group[0])
            try:
                client = await self.connections.client(target)
                by_name, running = await self._survey(client, ns, group)
            except CalibanError as exc:
                # One unreachable cluster must not hide the others.
                self.sink(
                    Notice(
                        f"could not refresh {len(group)} job(s) on {target.display}: {exc.message}",
                        level="warning",
                    )
                )
                continue
            updates += self._updates(group, by_name, running)
        return updates

    async def cancel(self, jobs: Sequence[JobRecord]) -> list[Update]:
        """Delete each job's Job with foreground propagation, so its pods go too; jobs
        that already finished keep the state they finished in."""
        updates: list[Update] = []
        limiter = anyio.CapacityLimiter(self.max_inflight)
        for (_, ns), group in self._groups(jobs).items():
            client = await self.connections.client(target_of(group[0]))
            by_name, running = await self._survey(client, ns, group)
            fresh = {u.job_id: u for u in self._updates(group, by_name, running)}
            to_stop: list[JobRecord] = []
            for job in group:
                now = fresh.get(job.job_id)
                if now is not None and now.state.terminal:
                    updates.append(now)
                else:
                    to_stop.append(job)
            plain = [j for j in to_stop if index_of(j) is None]
            indexed = indexed_groups([j for j in to_stop if index_of(j) is not None])
            async with anyio.create_task_group() as tg:
                for job in plain:
                    tg.start_soon(self._delete_one, client, ns, job, limiter, updates)
                for name, members in indexed.items():
                    tg.start_soon(
                        self._stop_indexed,
                        client,
                        ns,
                        name,
                        members,
                        by_name.get(name),
                        running.get(name, set()),
                        updates,
                    )
        return updates

    @staticmethod
    async def _delete_one(
        client: KubeClient,
        ns: str,
        job: JobRecord,
        limiter: anyio.CapacityLimiter,
        updates: list[Update],
    ) -> None:
        async with limiter:
            existed = await with_retries(
                lambda: client.delete_job(ns, name_of(job), propagation="Foreground"),
                RetryPolicy(attempts=4, initial=0.5, max_delay=4),
            )
        updates.append(
            Update(
                job.job_id,
                JobState.STOPPED,
                message="deleted with its pods" if existed else "was not on the cluster",
            )
        )

    @staticmethod
    async def _stop_indexed(
        client: KubeClient,
        ns: str,
        name: str,
        members: Sequence[JobRecord],
        remote: dict[str, Any] | None,
        running: set[int],
        updates: list[Update],
    ) -> None:
        stopping = {i for j in members if (i := index_of(j)) is not None}
        if remote is not None:
            status = remote.get("status") or {}
            done = k8sspec.parse_indexes(status.get("completedIndexes")) | k8sspec.parse_indexes(
                status.get("failedIndexes")
            )
            open_indexes = set(range(int(remote["spec"].get("completions") or 0))) - done
        else:
            open_indexes = set()
        if open_indexes <= stopping:
            # Nothing else of the sweep still to run: the whole Job goes.
            await client.delete_job(ns, name, propagation="Foreground")
            await client.delete_configmap(ns, name)
            message = "deleted with its Indexed Job"
        else:
            # Part of a sweep: later pods of these indexes skip (the launcher reads
            # the mark), running ones are deleted now.
            current = await client.read_configmap(ns, name)
            if current is not None:
                entries = json.loads(current["data"][k8sspec.ARGS_KEY])
                for i in stopping:
                    entries[i]["skip"] = True
                # One update in place: a pod starting meanwhile never finds it missing.
                text = json.dumps(entries, separators=(",", ":"))
                await client.patch_configmap(ns, name, {"data": {k8sspec.ARGS_KEY: text}})
            for pod in await client.list_pods(ns, f"{k8sspec.JOB_NAME_LABEL}={name}"):
                index = (pod["metadata"].get("labels") or {}).get(k8sspec.INDEX_LABEL)
                if index is not None and int(index) in stopping & (running | open_indexes):
                    await client.delete_pod(ns, str(pod["metadata"]["name"]))
            message = "stopped within its Indexed Job"
        for job in members:
            updates.append(Update(job.job_id, JobState.STOPPED, message=message))

    async def logs(self, job: JobRecord, *, follow: bool = False) -> AsyncIterator[str]:
        """The output of the job's most recent pod; with ``follow``, waits for the pod
        to start and streams until it ends."""
        target = target_of(job)
        client = await self.connections.client(target)
        name = name_of(job)
        selector = f"{k8sspec.JOB_NAME_LABEL}={name}"
        index = index_of(job)
        if index is not None:
            selector += f",{k8sspec.INDEX_LABEL}={index}"
        while True:
            pods = await client.list_pods(target.namespace, selector)
            if not pods:
                raise BackendError(
                    f"job {job.short_id} has no pod on {target.display}",
                    hint="it has not been scheduled yet, or it finished and was removed",
                )
            latest = max(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")))
            pending = (latest.get("status") or {}).get("phase") == "Pending"
            if pending and follow:
                await anyio.sleep(2)
                continue
            if pending:
                raise BackendError(
                    f"job {job.short_id} has not started yet (its pod is pending)",
                    hint="try again later, or pass --follow to wait for it",
                )
            break
        async for chunk in client.pod_log(
            target.namespace, str(latest["metadata"]["name"]), follow=follow
        ):
            yield chunk
