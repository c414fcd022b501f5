"""Kueue's part in the fake cluster: queued Jobs are held until admitted.

What a cluster with Kueue does to a batch/v1 Job labelled ``kueue.x-k8s.io/queue-name``:
Kueue makes one Workload for it (one per Job, so an Indexed Job of a whole sweep is one
Workload), keeps the Job suspended (``spec.suspend: true``: the Job controller creates no
pods) until the Workload fits the ClusterQueue's quota, then admits it by setting
``spec.suspend`` to false; the Job controller resumes it (condition ``Suspended`` False,
reason ``JobResumed``, a fresh ``startTime``) and creates its pods as usual.

The test decides admission: :meth:`FakeKueue.admit` one Job, or an admission policy
``capacity[queue] = N`` (at most N admitted, unfinished Workloads of that queue at once;
held ones are admitted oldest first whenever a Workload finishes or goes). Queues without
a capacity admit nothing by themselves.

Not modelled: ClusterQueues, flavors and their node selectors, preemption, the webhook
that suspends labelled Jobs created unsuspended (caliban creates them suspended), and the
Workload API itself (caliban reads only the Job; :meth:`FakeKueue.workloads` lets a test
count Workloads).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from .k8s_store import JsonObj, Store, now_rfc3339

if TYPE_CHECKING:
    from .k8s_jobs import JobController

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


def queue_of(job: JsonObj) -> str | None:
    value = (job["metadata"].get("labels") or {}).get(QUEUE_LABEL)
    return str(value) if value else None


def _finished(job: JsonObj) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _workload_condition(ctype: str, reason: str, message: str) -> JsonObj:
    return {
        "type": ctype,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339(),
    }


class FakeKueue:
    """Workloads of queued Jobs, and their admission."""

    def __init__(self, store: Store, controller: JobController) -> None:
        self.store = store
        self.controller = controller
        self.capacity: dict[str, int] = {}
        self._workloads: dict[str, JsonObj] = {}  # by Job uid
        self.admitted: list[tuple[str, str]] = []  # (namespace, Job name), in order
        self._busy = False
        self._again = False

    # hooks from the Job controller ----------------------------------------------------------

    def job_created(self, job: JsonObj) -> None:
        queue = queue_of(job)
        if queue is None:
            return
        meta, spec = job["metadata"], job["spec"]
        labels = {QUEUE_LABEL: queue}
        if (priority := (meta.get("labels") or {}).get(PRIORITY_LABEL)) is not None:
            labels[PRIORITY_LABEL] = priority
        self._workloads[meta["uid"]] = {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "Workload",
            "metadata": {
                "name": f"job-{meta['name']}-{meta['uid'][:5]}",
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                    }
                ],
            },
            "spec": {
                "queueName": queue,
                "podSets": [{"name": "main", "count": int(spec.get("parallelism") or 1)}],
            },
            "status": {"conditions": []},
        }
        self.reconcile()

    def job_gone(self, job: JsonObj) -> None:
        self._workloads.pop(job["metadata"]["uid"], None)
        self.reconcile()

    # what a test sees and drives ------------------------------------------------------------

    def workloads(self, ns: str | None = None) -> list[JsonObj]:
        return [
            copy.deepcopy(w)
            for w in self._workloads.values()
            if ns is None or w["metadata"]["namespace"] == ns
        ]

    def held(self, ns: str | None = None) -> list[JsonObj]:
        """Queued Jobs still suspended, oldest first."""
        jobs = [
            j
            for j in self.store.list_objects("jobs", ns)
            if queue_of(j) is not None
            and j["spec"].get("suspend")
            and not _finished(j)
            and not j["metadata"].get("deletionTimestamp")
        ]
        return sorted(
            jobs, key=lambda j: (j["metadata"]["creationTimestamp"], j["metadata"]["name"])
        )

    def admit(self, ns: str, name: str) -> JsonObj:
        """Kueue admits the Job's Workload: ``spec.suspend`` becomes false and pods follow."""
        job = self.controller.job(ns, name)
        if queue_of(job) is None or not job["spec"].get("suspend"):
            raise ValueError(f"Job {ns}/{name} is not held by a Kueue queue")
        workload = self._workloads.get(job["metadata"]["uid"])
        if workload is not None:
            message = f"Quota reserved in ClusterQueue cluster-{queue_of(job)}"
            workload["status"]["conditions"] = [
                _workload_condition("QuotaReserved", "QuotaReserved", message),
                _workload_condition("Admitted", "Admitted", "The workload is admitted"),
            ]
        with self.store.modify("jobs", ns, name) as live:
            live["metadata"]["generation"] = int(live["metadata"].get("generation") or 1) + 1
            live["spec"]["suspend"] = False
        self.admitted.append((ns, name))
        self.controller.resume(self.controller.job(ns, name))
        return copy.deepcopy(self.controller.job(ns, name))

    def reconcile(self) -> None:
        """Apply the admission policy: fill each queue with a capacity up to it."""
        if self._busy:  # admitting may finish a Job, which calls back here
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._fill()
        finally:
            self._busy = False

    def _fill(self) -> None:
        if not self.capacity:
            return
        running: dict[str, int] = {}
        for job in self.store.list_objects("jobs", None):
            queue = queue_of(job)
            if queue is not None and not job["spec"].get("suspend") and not _finished(job):
                running[queue] = running.get(queue, 0) + 1
        for job in self.held():
            queue = queue_of(job)
            assert queue is not None
            room = self.capacity.get(queue)
            if room is not None and running.get(queue, 0) < room:
                running[queue] = running.get(queue, 0) + 1
                self.admit(job["metadata"]["namespace"], job["metadata"]["name"])
