"""The fake cluster's Job "controller": pods, Job and pod statuses, pod logs.

A real cluster runs the Job controller and the kubelet; here the test plays both through the
drive methods of :class:`JobController` (re-exported on ``FakeKubernetes``). Creating a Job
immediately gets it pods, like the real controller does within milliseconds; everything after
that (running, succeeding, failing) happens when the test says so, or on a timer in the optional
:class:`AutoLifecycle` mode.

Status shapes follow the batch/v1 Job controller of Kubernetes 1.31+: terminal conditions are
preceded by the interim ``SuccessCriteriaMet`` / ``FailureTarget`` conditions in a separate
update, so a watcher sees both and must not treat the interim ones as final.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .k8s_admission import (
    BATCH_CONTROLLER_UID_LABEL,
    COMPLETION_INDEX,
    JOB_NAME_LABEL,
    generated_name,
)
from .k8s_store import JsonObj, Store, new_uid, now_rfc3339

if TYPE_CHECKING:
    from .k8s_kueue import FakeKueue

BACKOFF_MESSAGE = "Job has reached the specified backoff limit"
_FAIL_MESSAGES = {
    "BackoffLimitExceeded": BACKOFF_MESSAGE,
    "DeadlineExceeded": "Job was active longer than specified deadline",
    "FailedIndexes": "Job has failed indexes",
    "MaxFailedIndexesExceeded": "Job has exceeded the specified maximal number of failed indexes",
    "PodFailurePolicy": "Container main for pod failed with exit code 42 matching FailJob rule",
}
_COMPLETE_REASON = ("CompletionsReached", "Reached expected number of succeeded pods")

Outcome = Literal["succeed", "fail", "hang"]


# --- Pod logs --------------------------------------------------------------------------------


class PodLogs:
    """Log text per (namespace, pod, container), with a change signal for ``follow=true``.

    A test sets text per pod or per job (the job-wide text applies to every pod of that job,
    including replacements created later). The signal is a fresh ``asyncio.Event`` per change
    so synchronous drive methods can wake followers without awaiting a lock.
    """

    def __init__(self) -> None:
        self.by_pod: dict[tuple[str, str, str | None], str] = {}
        self.by_job: dict[tuple[str, str], str] = {}
        self._changed = asyncio.Event()
        self.closed = False

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._changed

    def set_pod(self, ns: str, pod: str, text: str, container: str | None = None) -> None:
        self.by_pod[(ns, pod, container)] = text
        self.notify()

    def append_pod(self, ns: str, pod: str, text: str, container: str | None = None) -> None:
        key = (ns, pod, container)
        self.by_pod[key] = self.by_pod.get(key, "") + text
        self.notify()

    def set_job(self, ns: str, job: str, text: str) -> None:
        self.by_job[(ns, job)] = text
        self.notify()

    def text(self, pod: JsonObj, container: str) -> str:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for key in ((ns, name, container), (ns, name, None)):
            if key in self.by_pod:
                return self.by_pod[key]
        job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
        return self.by_job.get((ns, job), "") if job else ""

    def close(self) -> None:
        self.closed = True
        self.notify()


# --- The controller -------------------------------------------------------------------------


@dataclass
class AutoLifecycle:
    """Run every new Job by itself: Running after ``start_after`` s, finished ``run_for`` later.

    ``outcome`` is "succeed", "fail", "hang" (stay Running) or a function of the created Job
    returning one of those; ``log`` (text or function of the Job) becomes every pod's log.
    """

    start_after: float = 0.0
    run_for: float = 0.05
    outcome: Outcome | Callable[[JsonObj], Outcome] = "succeed"
    fail_reason: str = "BackoffLimitExceeded"
    log: str | Callable[[JsonObj], str] | None = None


@dataclass
class _IndexState:
    completed: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    failures: Counter[int] = field(default_factory=Counter)


def _compress(indexes: set[int]) -> str:
    """{0,1,2,4} -> "0-2,4", the status.completedIndexes format."""
    out: list[str] = []
    ordered = sorted(indexes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def _condition(ctype: str, reason: str, message: str) -> JsonObj:
    ts = now_rfc3339()
    return {
        "type": ctype,
        "status": "True",
        "lastProbeTime": ts,
        "lastTransitionTime": ts,
        "reason": reason,
        "message": message,
    }


def job_finished(job: JsonObj) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def pod_active(pod: JsonObj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Pending", "Running") and not pod[
        "metadata"
    ].get("deletionTimestamp")


def pod_index(pod: JsonObj) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX)
    return None if value is None else int(value)


class JobController:
    """Creates pods for Jobs and moves Jobs and pods through their states."""

    def __init__(self, store: Store, logs: PodLogs) -> None:
        self.store = store
        self.logs = logs
        self.auto: AutoLifecycle | None = None
        self.kueue: FakeKueue | None = None  # set by FakeKubernetes
        self._resumed: dict[str, asyncio.Event] = {}  # by uid: held Jobs an AutoLifecycle awaits
        self._index: dict[str, _IndexState] = {}  # by job uid
        self._tasks: set[asyncio.Task[None]] = set()

    # lookups -------------------------------------------------------------------------------

    def job(self, ns: str, name: str) -> JsonObj:
        job = self.store.get("jobs", ns, name)
        if job is None:
            raise LookupError(f"no Job {ns}/{name} in the fake cluster")
        return job

    def pods_of(self, job: JsonObj) -> list[JsonObj]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self.store.list_objects("pods", job["metadata"]["namespace"])
            if (p["metadata"].get("labels") or {}).get(BATCH_CONTROLLER_UID_LABEL) == uid
            and p["metadata"].get("ownerReferences")
        ]

    def owner_of(self, pod: JsonObj) -> JsonObj | None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Job":
                job = self.store.get("jobs", pod["metadata"]["namespace"], ref["name"])
                if job is not None and job["metadata"]["uid"] == ref.get("uid"):
                    return job
        return None

    def _state(self, job: JsonObj) -> _IndexState:
        return self._index.setdefault(job["metadata"]["uid"], _IndexState())

    # pods ----------------------------------------------------------------------------------

    def _new_pod(self, job: JsonObj, index: int | None) -> JsonObj:
        meta, tmpl = job["metadata"], job["spec"]["template"]
        tmeta = tmpl.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        annotations = dict(tmeta.get("annotations") or {})
        spec = copy.deepcopy(tmpl.get("spec") or {})
        prefix = f"{meta['name']}-" if index is None else f"{meta['name']}-{index}-"
        if index is not None:
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
            spec["hostname"] = f"{meta['name']}-{index}"
            # The real controller injects a downward-API reference, not a literal value.
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                container.setdefault("env", []).append(
                    {
                        "name": "JOB_COMPLETION_INDEX",
                        "valueFrom": {
                            "fieldRef": {
                                "apiVersion": "v1",
                                "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']",
                            }
                        },
                    }
                )
        for key, value in (
            ("terminationGracePeriodSeconds", 30),
            ("dnsPolicy", "ClusterFirst"),
            ("schedulerName", "default-scheduler"),
            ("serviceAccountName", "default"),
        ):
            spec.setdefault(key, value)
        ns = meta["namespace"]
        name = generated_name(prefix)
        while self.store.get("pods", ns, name) is not None:
            name = generated_name(prefix)
        pod_meta: JsonObj = {
            "name": name,
            "generateName": prefix,
            "namespace": ns,
            "uid": new_uid(),
            "creationTimestamp": now_rfc3339(),
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if annotations:
            pod_meta["annotations"] = annotations
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": pod_meta,
            "spec": spec,
            "status": {
                "phase": "Pending",
                "qosClass": "BestEffort",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}
                ],
                "containerStatuses": [
                    {
                        "name": c.get("name"),
                        "image": c.get("image"),
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                    for c in spec.get("containers", [])
                ],
            },
        }

    def _set_pod_phase(self, pod: JsonObj, phase: str) -> None:
        meta = pod["metadata"]
        with self.store.modify("pods", meta["namespace"], meta["name"]) as live:
            status = live["status"]
            now = now_rfc3339()
            status["phase"] = phase
            status.setdefault("startTime", now)
            if phase == "Running":
                live["spec"].setdefault("nodeName", "gke-fake-default-pool-node-0")
                status.update(hostIP="10.128.0.2", podIP="10.4.0.7")
                status["conditions"] = [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ]
                state: JsonObj = {"running": {"startedAt": now}}
                ready = True
            else:
                ok = phase == "Succeeded"
                started = next(
                    (
                        cs["state"]["running"]["startedAt"]
                        for cs in status.get("containerStatuses", [])
                        if "running" in cs.get("state", {})
                    ),
                    now,
                )
                state = {
                    "terminated": {
                        "exitCode": 0 if ok else 1,
                        "reason": "Completed" if ok else "Error",
                        "startedAt": started,
                        "finishedAt": now,
                    }
                }
                ready = False
                for cond in status.get("conditions", []):
                    if cond["type"] in ("Ready", "ContainersReady"):
                        cond["status"] = "False"
                        cond["reason"] = "PodCompleted"
            for cs in status.get("containerStatuses", []):
                cs.update(state=copy.deepcopy(state), ready=ready, started=phase == "Running")
                if not cs.get("imageID"):  # the kubelet fills these in once the image is pulled
                    cs["imageID"] = f"{cs.get('image')}@sha256:{'0' * 64}"
                    cs["containerID"] = f"containerd://{new_uid().replace('-', '')}"
        self.logs.notify()

    # status bookkeeping --------------------------------------------------------------------

    def _refresh_counts(self, job: JsonObj) -> None:
        """Recompute active/ready from the pods; succeeded/failed are kept incrementally."""
        pods = self.pods_of(job)
        meta = job["metadata"]
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            status = live.setdefault("status", {})
            active = [p for p in pods if pod_active(p)]
            status["active"] = len(active)
            status["ready"] = sum(1 for p in active if p["status"]["phase"] == "Running")
            status["terminating"] = 0
            status.setdefault("uncountedTerminatedPods", {})
            if active:
                status.setdefault("startTime", now_rfc3339())
            if live["spec"].get("completionMode") == "Indexed":
                state = self._state(live)
                if state.completed:
                    status["completedIndexes"] = _compress(state.completed)
                if state.failed:
                    status["failedIndexes"] = _compress(state.failed)
            # Like the real API: "active" is omitempty, "ready"/"terminating" are always there.
            if not status["active"]:
                del status["active"]

    def _bump_counter(self, job: JsonObj, key: str, by: int = 1) -> None:
        meta = job["metadata"]
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            status = live.setdefault("status", {})
            status[key] = status.get(key, 0) + by

    def sync(self, job: JsonObj) -> None:
        """Create missing pods, update counts, and finish the Job when it has succeeded."""
        if job_finished(job) or job["metadata"].get("deletionTimestamp"):
            return
        if job["spec"].get("suspend"):
            self._set_suspended(job, True, "JobSuspended", "Job suspended")
            return
        spec, status = job["spec"], job.get("status") or {}
        pods = self.pods_of(job)
        active = [p for p in pods if pod_active(p)]
        parallelism = spec.get("parallelism", 1)
        completions = spec.get("completions")
        succeeded = status.get("succeeded", 0)
        if spec.get("completionMode") == "Indexed":
            state = self._state(job)
            if len(state.completed) >= completions:
                self._refresh_counts(job)
                self._finish_success(job)
                return
            busy = {pod_index(p) for p in active}
            pending = [
                i
                for i in range(completions)
                if i not in state.completed and i not in state.failed and i not in busy
            ]
            if not pending and not active and state.failed:
                self._refresh_counts(job)
                self._finish_failure(job, "FailedIndexes", _FAIL_MESSAGES["FailedIndexes"])
                return
            for index in pending[: max(0, parallelism - len(active))]:
                self.store.insert("pods", self._new_pod(job, index))
        else:
            if completions is not None:
                if succeeded >= completions:
                    self._refresh_counts(job)
                    self._finish_success(job)
                    return
                want = min(parallelism, completions - succeeded)
            else:  # work-queue Job: done once something succeeded and nothing is left running
                if succeeded and not active:
                    self._refresh_counts(job)
                    self._finish_success(job)
                    return
                want = 0 if succeeded else parallelism
            for _ in range(max(0, want - len(active))):
                self.store.insert("pods", self._new_pod(job, None))
        self._refresh_counts(job)

    def _set_suspended(self, job: JsonObj, value: bool, reason: str, message: str) -> None:
        """The controller's ``Suspended`` condition, as it keeps it for suspended Jobs."""
        meta = job["metadata"]
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            conditions = live.setdefault("status", {}).setdefault("conditions", [])
            want = "True" if value else "False"
            for cond in conditions:
                if cond["type"] == "Suspended":
                    if cond["status"] != want:
                        cond.update(_condition("Suspended", reason, message), status=want)
                    return
            if value:
                conditions.append(_condition("Suspended", reason, message))

    def resume(self, job: JsonObj) -> None:
        """``spec.suspend`` went false: the controller resumes the Job and makes its pods."""
        self._set_suspended(job, False, "JobResumed", "Job resumed")
        meta = job["metadata"]
        if (event := self._resumed.pop(meta["uid"], None)) is not None:
            event.set()
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            live["status"]["startTime"] = now_rfc3339()
        self.sync(self.job(meta["namespace"], meta["name"]))

    def _settled(self) -> None:
        if self.kueue is not None:
            self.kueue.reconcile()

    def _finish_success(self, job: JsonObj) -> None:
        meta = job["metadata"]
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            live["status"].setdefault("conditions", []).append(
                _condition("SuccessCriteriaMet", *_COMPLETE_REASON)
            )
        for pod in self.pods_of(job):
            if pod_active(pod):
                self._set_pod_phase(pod, "Succeeded")
        self._refresh_counts(job)
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            live["status"]["conditions"].append(_condition("Complete", *_COMPLETE_REASON))
            live["status"]["completionTime"] = now_rfc3339()
        self._settled()

    def _finish_failure(self, job: JsonObj, reason: str, message: str) -> None:
        meta = job["metadata"]
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            live["status"].setdefault("conditions", []).append(
                _condition("FailureTarget", reason, message)
            )
        # The controller terminates what is still running; those pods count as failed too.
        killed = 0
        for pod in self.pods_of(job):
            if pod_active(pod):
                self._set_pod_phase(pod, "Failed")
                killed += 1
        if killed:
            self._bump_counter(job, "failed", killed)
        self._refresh_counts(job)
        with self.store.modify("jobs", meta["namespace"], meta["name"]) as live:
            live["status"]["conditions"].append(_condition("Failed", reason, message))
        self._settled()

    # transitions a test drives -------------------------------------------------------------

    def set_running(self, ns: str, name: str) -> JsonObj:
        job = self.job(ns, name)
        self.sync(job)
        for pod in self.pods_of(job):
            if pod["status"]["phase"] == "Pending" and not pod["metadata"].get("deletionTimestamp"):
                self._set_pod_phase(pod, "Running")
        self._refresh_counts(job)
        return copy.deepcopy(job)

    def pod_succeeded(self, pod: JsonObj) -> None:
        if not pod_active(pod):
            raise ValueError(f"pod {pod['metadata']['name']} is not active")
        self._set_pod_phase(pod, "Succeeded")
        job = self.owner_of(pod)
        if job is None or job_finished(job):
            return
        self._bump_counter(job, "succeeded")
        index = pod_index(pod)
        if index is not None:
            self._state(job).completed.add(index)
        self.sync(job)

    def pod_failed(self, pod: JsonObj, *, already_terminal: bool = False) -> None:
        """A pod of a Job failed (or vanished): count it, then retry or fail the Job."""
        if not already_terminal:
            if not pod_active(pod):
                raise ValueError(f"pod {pod['metadata']['name']} is not active")
            self._set_pod_phase(pod, "Failed")
        job = self.owner_of(pod)
        if job is None or job_finished(job) or job["metadata"].get("deletionTimestamp"):
            return
        self._bump_counter(job, "failed")
        spec = job["spec"]
        index = pod_index(pod)
        per_index = spec.get("backoffLimitPerIndex")
        if index is not None and per_index is not None:
            state = self._state(job)
            state.failures[index] += 1
            if state.failures[index] > per_index:
                state.failed.add(index)
                limit = spec.get("maxFailedIndexes")
                if limit is not None and len(state.failed) > limit:
                    self._refresh_counts(job)
                    self._finish_failure(
                        job, "MaxFailedIndexesExceeded", _FAIL_MESSAGES["MaxFailedIndexesExceeded"]
                    )
                    return
        elif job["status"].get("failed", 0) > spec.get("backoffLimit", 6):
            self._refresh_counts(job)
            self._finish_failure(job, "BackoffLimitExceeded", BACKOFF_MESSAGE)
            return
        self.sync(job)

    def succeed(self, ns: str, name: str) -> JsonObj:
        """Every pod succeeds, including the ones created for later completions."""
        job = self.job(ns, name)
        for _ in range(10_000):
            self.sync(job)
            active = [p for p in self.pods_of(job) if pod_active(p)]
            if job_finished(job) or not active:
                break
            for pod in active:
                if pod_active(pod):  # finishing the Job may already have completed the rest
                    self.pod_succeeded(pod)
        return copy.deepcopy(job)

    def fail(
        self, ns: str, name: str, reason: str = "BackoffLimitExceeded", message: str | None = None
    ) -> JsonObj:
        """The Job fails now with ``reason``, whatever its backoff limit says."""
        job = self.job(ns, name)
        if not job_finished(job):
            self._finish_failure(job, reason, message or _FAIL_MESSAGES.get(reason, reason))
        return copy.deepcopy(job)

    def _pod_for_index(self, job: JsonObj, index: int) -> JsonObj:
        for pod in self.pods_of(job):
            if pod_active(pod) and pod_index(pod) == index:
                return pod
        raise LookupError(
            f"Job {job['metadata']['name']} has no active pod for index {index} "
            "(not started yet because of parallelism, or already finished)"
        )

    def succeed_index(self, ns: str, name: str, index: int) -> JsonObj:
        job = self.job(ns, name)
        self.pod_succeeded(self._pod_for_index(job, index))
        return copy.deepcopy(job)

    def fail_index(self, ns: str, name: str, index: int) -> JsonObj:
        job = self.job(ns, name)
        self.pod_failed(self._pod_for_index(job, index))
        return copy.deepcopy(job)

    # deletion hooks ------------------------------------------------------------------------

    def pod_removed(self, pod: JsonObj) -> None:
        """A pod of a running Job was deleted through the API: the controller replaces it."""
        # The snapshot already carries a deletionTimestamp, so look at the phase only.
        if (pod.get("status") or {}).get("phase") in ("Pending", "Running"):
            self.pod_failed(pod, already_terminal=True)

    def forget(self, job: JsonObj) -> None:
        self._index.pop(job["metadata"]["uid"], None)
        if (event := self._resumed.pop(job["metadata"]["uid"], None)) is not None:
            event.set()  # deleted while held: its driver sees it gone
        if self.kueue is not None:
            self.kueue.job_gone(job)

    # auto lifecycle ------------------------------------------------------------------------

    def job_created(self, job: JsonObj) -> None:
        self.sync(job)
        if self.kueue is not None:
            self.kueue.job_created(job)
        if self.auto is not None:
            task = asyncio.get_running_loop().create_task(self._drive(job, self.auto))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drive(self, job: JsonObj, auto: AutoLifecycle) -> None:
        meta = job["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]

        def still_there() -> bool:
            live = self.store.get("jobs", ns, name)
            return live is not None and live["metadata"]["uid"] == uid and not job_finished(live)

        if auto.log is not None:
            self.logs.set_job(ns, name, auto.log(job) if callable(auto.log) else auto.log)
        # A Job held by a queue starts only once admitted (by the test or a capacity).
        if ((self.store.get("jobs", ns, name) or {}).get("spec") or {}).get("suspend"):
            await self._resumed.setdefault(uid, asyncio.Event()).wait()
        await asyncio.sleep(auto.start_after)
        if not still_there():
            return
        self.set_running(ns, name)
        outcome = auto.outcome(job) if callable(auto.outcome) else auto.outcome
        if outcome == "hang":
            return
        await asyncio.sleep(auto.run_for)
        if not still_there():
            return
        if outcome == "succeed":
            self.succeed(ns, name)
        else:
            self.fail(ns, name, auto.fail_reason)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
