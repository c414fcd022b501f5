"""Kubernetes Job manifests, labels and state mapping for ``caliban cluster``. Pure.

Everything here is plain dicts shaped exactly like the API's JSON (camelCase), so
a manifest can be printed by ``--dry_run``, written by ``--export``, stored with
the job, and sent as is.

Choices, and why:

* **Labels.** caliban's own labels use the ``caliban.dev/`` prefix (``caliban.dev/job``,
  ``caliban.dev/store``, ``caliban.dev/xgroup``), the Kubernetes convention for a
  tool's labels, so they never collide with a user's ``-l`` labels, which are plain
  keys. They are set on the Job *and* its pod template, so ``kubectl get pods -l
  caliban.dev/xgroup=...`` works too.
* **Names** are deterministic, ``<name>-<job id>``: a create retried after a lost
  response answers 409 instead of making a second Job.
* **Placement.** On-demand nodes by default. ``spot`` uses GKE Spot VMs,
  ``preemptible`` the legacy preemptible label (the original put *every* job there,
  which leaves pods unschedulable on clusters without such a pool). GKE node labels
  are only used with ``cluster_type="gke"``; on other clusters a GPU job asks for
  ``nvidia.com/gpu`` and nothing else, plus whatever ``node_selector`` says.
* **Failures.** ``restartPolicy: Never``, ``backoffLimit`` (default 0: a training
  script that failed usually fails again), and a ``podFailurePolicy`` that ignores
  pods killed by a disruption (spot reclaim, node drain), so those are retried
  without counting as failures. Finished Jobs are deleted after
  ``ttlSecondsAfterFinished`` (default 7 days).
* **Kueue.** With a queue, the Job carries ``kueue.x-k8s.io/queue-name`` (and
  ``kueue.x-k8s.io/priority-class`` for a WorkloadPriorityClass) and is created
  with ``spec.suspend: true``: Kueue makes one Workload per Job and admits it by
  setting ``suspend`` to false. The labels are on the Job only, not on its pod
  template: Kueue's pod integration would otherwise try to manage the pods as
  Workloads of their own. Admission is read from ``spec.suspend`` (see
  :func:`job_state`). ``compute_class`` selects a GKE custom ComputeClass with
  the ``cloud.google.com/compute-class`` node label; the class then chooses the
  machine, so the GPU type label and the spot labels are left out.
* **Indexed sweeps.** One Indexed Job for the whole sweep; each pod reads its
  arguments from a mounted ConfigMap at ``JOB_COMPLETION_INDEX`` (see
  :data:`LAUNCHER`). ``backoffLimitPerIndex`` records a failure per index instead of
  failing the whole sweep; it and the completion-index pod label need Kubernetes 1.29
  (:mod:`caliban.platforms.kubernetes.versions` says which feature needs which
  version). The ConfigMap is created before the Job that mounts it, and made the
  Job's dependent afterwards (:func:`owned_by`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from caliban.core.accelerators import AcceleratorSpec, gke_accelerator_label, gke_tpu_selectors
from caliban.core.names import DNS1123_MAX, dns1123_name
from caliban.errors import ValidationError
from caliban.spec import JobState

PREFIX = "caliban.dev/"
JOB_LABEL = PREFIX + "job"
STORE_LABEL = PREFIX + "store"
XGROUP_LABEL = PREFIX + "xgroup"
COMMIT_LABEL = PREFIX + "commit"
INDEXED_LABEL = PREFIX + "indexed"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "job-name"

CONTAINER = "main"
ARGS_MOUNT = "/etc/caliban"
ARGS_KEY = "args.json"
DEFAULT_TTL = 7 * 24 * 3600
CLUSTER_TYPES = ("gke", "generic")
# A ConfigMap holds at most 1 MiB; keep room for metadata.
MAX_CONFIGMAP_BYTES = 900_000

GKE_SPOT = "cloud.google.com/gke-spot"
GKE_PREEMPTIBLE = "cloud.google.com/gke-preemptible"
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
TPU_RESOURCE = "google.com/tpu"
GKE_COMPUTE_CLASS = "cloud.google.com/compute-class"
KUEUE_PREFIX = "kueue.x-k8s.io/"
KUEUE_QUEUE_LABEL = KUEUE_PREFIX + "queue-name"
KUEUE_PRIORITY_LABEL = KUEUE_PREFIX + "priority-class"
_KUEUE_LABELS = (KUEUE_QUEUE_LABEL, KUEUE_PRIORITY_LABEL)

# (milli-CPU, MB) requested when --min_cpu/--min_mem are not given. On GKE the
# original's figures: node auto-provisioning makes a node that fits, and a CPU job
# got most of a 32-core machine. Elsewhere the nodes are what they are, so ask for
# little and let the user ask for more.
DEFAULT_REQUESTS = {
    ("gke", False): (31000, 25000),
    ("gke", True): (1500, 7000),
    ("generic", False): (1000, 2000),
    ("generic", True): (1000, 4000),
}

# Runs in every pod of an Indexed Job: pick this index's entry from the mounted
# ConfigMap and exec the image's own command with its arguments. python3 is in
# every image caliban builds; exec keeps the user's process as PID 1's child
# so its exit code is the pod's.
LAUNCHER = (
    "import json,os,sys\n"
    "p=os.environ.get('CALIBAN_ARGS_FILE','" + ARGS_MOUNT + "/" + ARGS_KEY + "')\n"
    "e=json.load(open(p))[int(os.environ['JOB_COMPLETION_INDEX'])]\n"
    "if e.get('skip'):\n"
    " print('caliban: this experiment was stopped',flush=True);sys.exit(0)\n"
    "os.environ['CALIBAN_JOB_ID']=e['job']\n"
    "c=sys.argv[1:]+e['args']\n"
    "os.execvp(c[0],c)\n"
)

_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_PREFIX_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUANTITY = re.compile(r"[0-9]+")
# LocalQueue, WorkloadPriorityClass and ComputeClass names are object names
# (DNS-1123 subdomains) used as label values, so at most 63 characters.
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")


def check_object_name(value: str, flag: str) -> None:
    """Raise ValidationError unless ``value`` names a Kubernetes object and fits a label."""
    if not _OBJECT_NAME.fullmatch(value):
        raise ValidationError(
            f"{flag} {value!r} is not a Kubernetes object name "
            "(at most 63 lowercase letters, digits, '-' and '.', starting and ending "
            "with a letter or digit)"
        )


# -- labels -------------------------------------------------------------------------------


def label_value(text: str) -> str:
    """A valid label value from any text: at most 63 of ``[A-Za-z0-9._-]``, starting and
    ending with a letter or digit (or empty). Runs of other characters become ``-``."""
    cleaned = _VALUE_BAD.sub("-", text)[:DNS1123_MAX]
    return cleaned.strip("._-")


def label_key(text: str) -> str:
    """A valid label key, or ``""`` when nothing usable is left.

    ``prefix/name`` keeps a valid DNS-subdomain prefix; otherwise the slash is
    treated like any other bad character and the key becomes a plain name.
    """
    text = text.strip()
    prefix, sep, name = text.rpartition("/")
    if sep and len(prefix) <= 253 and _PREFIX_RE.fullmatch(prefix):
        clean = label_value(name)
        return f"{prefix}/{clean}" if clean else ""
    return label_value(text.replace("/", "-"))


def labels_for(
    *,
    user: Mapping[str, str],
    xgroup: str,
    store_id: str | None,
    job_id: str,
    indexed: bool = False,
    commit: str | None = None,
) -> dict[str, str]:
    """User labels (sanitised) under caliban's own, which always win. ``commit``:
    the short git commit of the code (hex, so a valid label value as it is)."""
    out: dict[str, str] = {}
    for key, value in user.items():
        clean = label_key(key)
        if clean and not clean.startswith(PREFIX):
            out[clean] = label_value(value)
    out[XGROUP_LABEL] = label_value(xgroup)
    out[JOB_LABEL] = job_id
    if store_id:
        out[STORE_LABEL] = store_id
    if indexed:
        out[INDEXED_LABEL] = "true"
    if commit:
        out[COMMIT_LABEL] = label_value(commit)
    return out


def job_name(prefix: str, job_id: str, *, reserve: int = 0) -> str:
    """``<prefix>-<job id>``, a DNS-1123 label of at most ``63 - reserve`` characters.

    Indexed Jobs reserve room for ``-<index>``: each pod's hostname is
    ``<job name>-<index>`` and must itself be a valid label.
    """
    room = DNS1123_MAX - reserve - len(job_id) - 1
    if room < 1:
        raise ValueError(f"no room for a name prefix with job id {job_id!r}")
    head = dns1123_name(prefix)[:room].rstrip("-") or "job"
    return f"{head}-{job_id}"


# -- the shape of a sweep ---------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where and on what a job's pod runs; shared by every job of a submission."""

    cluster_type: str = "generic"
    gpu: AcceleratorSpec | None = None
    tpu: AcceleratorSpec | None = None
    spot: bool = False
    preemptible: bool = False
    min_cpu: int | None = None  # milli-CPU
    min_mem: int | None = None  # MB
    node_selector: Mapping[str, str] = field(default_factory=dict)
    # Out of the repr, which is part of a submission's spec key: keys made before this
    # field existed stay the same (plan._spec_key adds it when set).
    compute_class: str | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise ValidationError for combinations no cluster can run."""
        if self.compute_class is not None:
            check_object_name(self.compute_class, "--compute_class")
            if self.cluster_type != "gke":
                raise ValidationError(
                    "--compute_class selects a GKE ComputeClass, which this cluster may not have",
                    hint="pass --cluster_type gke if it is a GKE cluster",
                )
            if self.spot or self.preemptible:
                raise ValidationError(
                    "--compute_class and --spot/--preemptible exclude each other: "
                    "the ComputeClass says whether its nodes are Spot VMs"
                )
            if GKE_COMPUTE_CLASS in self.node_selector:
                raise ValidationError(
                    f"--compute_class and --node_selector {GKE_COMPUTE_CLASS}=... "
                    "exclude each other; pick one"
                )
        if self.cluster_type not in CLUSTER_TYPES:
            raise ValidationError(
                f"unknown cluster type {self.cluster_type!r}; use one of {', '.join(CLUSTER_TYPES)}"
            )
        if self.gpu is not None and self.tpu is not None:
            raise ValidationError(
                "a job takes GPUs or TPUs, not both; drop --gpu_spec or --tpu_spec"
            )
        if self.spot and self.preemptible:
            raise ValidationError("--spot and --preemptible exclude each other; pick one")
        generic = self.cluster_type == "generic"
        if generic and self.tpu is not None:
            raise ValidationError(
                "TPUs need a GKE cluster", hint="pass --cluster_type gke if this cluster is GKE"
            )
        if generic and (self.spot or self.preemptible):
            flag = "--spot" if self.spot else "--preemptible"
            raise ValidationError(
                f"{flag} selects GKE node labels, which this cluster may not have",
                hint="pass --cluster_type gke if it is a GKE cluster, or use --node_selector",
            )
        for amount, flag in ((self.min_cpu, "--min_cpu"), (self.min_mem, "--min_mem")):
            if amount is not None and amount <= 0:
                raise ValidationError(f"{flag} must be positive")
        if self.tpu is not None:
            gke_tpu_selectors(self.tpu)  # raises for shapes GKE has no slice of
        for key, value in self.node_selector.items():
            if label_key(key) != key or label_value(value) != value:
                raise ValidationError(f"--node_selector {key}={value} is not a valid label")

    @property
    def accelerated(self) -> bool:
        return self.gpu is not None or self.tpu is not None

    def requests(self) -> dict[str, str]:
        cpu, mem = DEFAULT_REQUESTS[(self.cluster_type, self.accelerated)]
        return {"cpu": f"{self.min_cpu or cpu}m", "memory": f"{self.min_mem or mem}M"}

    def limits(self) -> dict[str, str]:
        if self.gpu is not None:
            return {GPU_RESOURCE: str(self.gpu.count)}
        if self.tpu is not None:
            return {TPU_RESOURCE: str(self.tpu.count)}
        return {}

    def selector(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.cluster_type == "gke":
            # A ComputeClass lists the GPU types it may fall back to; pinning one
            # with the accelerator label would defeat its priorities.
            if self.gpu is not None and self.compute_class is None:
                out[GKE_ACCELERATOR] = gke_accelerator_label(self.gpu)
            if self.compute_class is not None:
                out[GKE_COMPUTE_CLASS] = self.compute_class
            if self.tpu is not None:
                out.update(gke_tpu_selectors(self.tpu))
            if self.spot:
                out[GKE_SPOT] = "true"
            if self.preemptible:
                out[GKE_PREEMPTIBLE] = "true"
        out.update(self.node_selector)
        return out

    def tolerations(self) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if self.gpu is not None:
            # GKE taints GPU nodes; harmless where nothing is tainted.
            out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if self.tpu is not None:
            out.append({"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        for flag, key in ((self.spot, GKE_SPOT), (self.preemptible, GKE_PREEMPTIBLE)):
            if flag:
                out.append(
                    {"key": key, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
                )
        return out


@dataclass(frozen=True)
class JobShape:
    """Everything the jobs of one submission share."""

    image: str
    placement: Placement = field(default_factory=Placement)
    xgroup: str = ""
    backoff_limit: int = 0
    ttl_seconds: int | None = DEFAULT_TTL
    env: Mapping[str, str] = field(default_factory=dict)
    queue: str | None = None  # a Kueue LocalQueue in the Job's namespace
    priority_class: str | None = None  # a Kueue WorkloadPriorityClass

    def check(self) -> None:
        self.placement.check()
        if self.queue is not None:
            check_object_name(self.queue, "--queue")
        if self.priority_class is not None:
            if self.queue is None:
                raise ValidationError(
                    "--priority_class is a Kueue WorkloadPriorityClass and needs --queue",
                    hint="pass --queue LOCALQUEUE too",
                )
            check_object_name(self.priority_class, "--priority_class")

    def kueue_labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.queue is not None:
            out[KUEUE_QUEUE_LABEL] = self.queue
        if self.priority_class is not None:
            out[KUEUE_PRIORITY_LABEL] = self.priority_class
        return out
        if self.backoff_limit < 0:
            raise ValidationError("--backoff_limit must be 0 or more")
        if self.ttl_seconds is not None and self.ttl_seconds < 0:
            raise ValidationError("--ttl must be 0 or more seconds")


def _env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def job_manifest(
    shape: JobShape, *, name: str, job_id: str, args: Sequence[str], labels: Mapping[str, str]
) -> dict[str, Any]:
    """The batch/v1 Job of one experiment."""
    place = shape.placement
    resources: dict[str, Any] = {"requests": place.requests()}
    if place.limits():
        resources["limits"] = place.limits()
    env = {
        "PYTHONUNBUFFERED": "1",
        "CALIBAN_JOB_ID": job_id,
        "CALIBAN_XGROUP": shape.xgroup,
        **shape.env,
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": shape.image,
        "args": list(args),
        "env": _env(env),
        "resources": resources,
        # Images are pinned by digest: a node that has it needs no pull.
        "imagePullPolicy": "IfNotPresent",
    }
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if place.selector():
        pod["nodeSelector"] = place.selector()
    if place.tolerations():
        pod["tolerations"] = place.tolerations()
    spec: dict[str, Any] = {
        "backoffLimit": shape.backoff_limit,
        # status is required by the schemas of 1.25-1.34: the server defaults it, but
        # strict validators (kubectl --validate=strict, CI linters) reject it missing.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                }
            ]
        },
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if shape.ttl_seconds is not None:
        spec["ttlSecondsAfterFinished"] = shape.ttl_seconds
    if shape.queue is not None:
        # Kueue's webhook would suspend it too; created suspended, no pod can start
        # before admission even where the webhook is not in the request path.
        spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {**labels, **shape.kueue_labels()}},
        "spec": spec,
    }


def container_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifest["spec"]["template"]["spec"]["containers"]
    return containers[0]


def rebind(manifest: Mapping[str, Any], *, prefix: str, job_id: str) -> dict[str, Any]:
    """A recorded Job manifest re-addressed to a new caliban job id (resubmit)."""
    new = copy.deepcopy(dict(manifest))
    new["metadata"]["name"] = job_name(prefix, job_id)
    for meta in (new["metadata"], new["spec"]["template"].setdefault("metadata", {})):
        meta.setdefault("labels", {})[JOB_LABEL] = job_id
        meta["labels"].pop(INDEXED_LABEL, None)
    container = container_of(new)
    container["env"] = [
        {"name": "CALIBAN_JOB_ID", "value": job_id} if e.get("name") == "CALIBAN_JOB_ID" else e
        for e in container.get("env", [])
    ]
    return new


def name_prefix(manifest: Mapping[str, Any]) -> str:
    """The ``<prefix>`` of ``<prefix>-<job id>``."""
    name = str(manifest["metadata"]["name"])
    job_id = str(manifest["metadata"]["labels"][JOB_LABEL])
    return name[: -len(job_id) - 1] if name.endswith("-" + job_id) else name


# -- indexed sweeps ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    job_id: str
    args: tuple[str, ...]
    skip: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job": self.job_id, "args": list(self.args)}
        if self.skip:
            out["skip"] = True
        return out


def configmap(
    name: str,
    entries: Sequence[IndexEntry],
    labels: Mapping[str, str],
    owner: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ConfigMap an Indexed Job's pods read their arguments from.

    ``owner`` (the created Job's name and uid) makes Kubernetes delete it with the
    Job, also when the Job's TTL expires.
    """
    data = json.dumps([e.to_json() for e in entries], separators=(",", ":"))
    if len(data.encode()) > MAX_CONFIGMAP_BYTES:
        raise ValidationError(
            f"the arguments of {len(entries)} experiments do not fit in one ConfigMap (1 MiB)",
            hint="submit without --indexed, or split the sweep",
        )
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if owner:
        meta.update(owned_by(owner["name"], owner["uid"])["metadata"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {ARGS_KEY: data}}


def owned_by(job: str, uid: str) -> dict[str, Any]:
    """A merge patch making an object a dependent of the Job ``job`` (with ``uid``).

    The ConfigMap of an Indexed Job is created first, so its pods never start without
    it; the Job's uid exists only once the Job does, so the owner comes afterwards.
    """
    ref = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job,
        "uid": uid,
        "blockOwnerDeletion": True,
    }
    return {"metadata": {"ownerReferences": [ref]}}


def same_arguments(found: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """Whether a ConfigMap read back maps the same indexes to the same experiments."""
    try:
        have = json.loads(str((found.get("data") or {})[ARGS_KEY]))
    except (KeyError, ValueError):
        return False
    return bool(have == json.loads(expected["data"][ARGS_KEY]))


def indexed_manifest(
    template: Mapping[str, Any],
    *,
    name: str,
    first_job_id: str,
    completions: int,
    parallelism: int | None,
    entry_command: Sequence[str],
) -> dict[str, Any]:
    """One Indexed Job running ``completions`` experiments, built from the manifest of
    any one of them (they differ only in arguments and job id)."""
    if completions < 1:
        raise ValueError("an Indexed Job needs at least one experiment")
    job = copy.deepcopy(dict(template))
    labels = dict(job["metadata"].get("labels") or {})
    labels[JOB_LABEL] = first_job_id
    labels[INDEXED_LABEL] = "true"
    job["metadata"] = {"name": name, "labels": labels}
    spec = job["spec"]
    pod_labels = {k: v for k, v in labels.items() if k not in _KUEUE_LABELS}
    spec["template"]["metadata"] = {"labels": pod_labels}
    # Per index: a failed experiment is recorded in status.failedIndexes and the
    # others go on; a global backoffLimit would fail the whole sweep instead.
    spec["backoffLimitPerIndex"] = spec.pop("backoffLimit", 0)
    spec["completionMode"] = "Indexed"
    spec["completions"] = completions
    spec["parallelism"] = min(parallelism or completions, completions)
    pod = spec["template"]["spec"]
    container = container_of(job)
    container["command"] = ["python3", "-c", LAUNCHER]
    container["args"] = list(entry_command)
    container["env"] = [e for e in container.get("env", []) if e.get("name") != "CALIBAN_JOB_ID"]
    container["volumeMounts"] = [
        {"name": "caliban-args", "mountPath": ARGS_MOUNT, "readOnly": True}
    ]
    pod["volumes"] = [{"name": "caliban-args", "configMap": {"name": name}}]
    return job


def index_reserve(completions: int) -> int:
    """Characters an Indexed Job's name must leave for ``-<index>`` in pod hostnames."""
    return len(str(max(0, completions - 1))) + 1


# -- states ------------------------------------------------------------------------------------


def parse_indexes(text: str | None) -> set[int]:
    """``"0-3,5"`` (status.completedIndexes / failedIndexes) as ``{0, 1, 2, 3, 5}``."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition("-")
        if not _QUANTITY.fullmatch(low) or (sep and not _QUANTITY.fullmatch(high)):
            raise ValueError(f"not an index interval list: {text!r}")
        start, end = int(low), int(high) if sep else int(low)
        out.update(range(start, end + 1))
    return out


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def _reason(cond: Mapping[str, Any]) -> str:
    parts = [str(cond[k]) for k in ("reason", "message") if cond.get(k)]
    return ": ".join(parts) or str(cond.get("type"))


_Rule = Callable[[Mapping[str, Any]], tuple[JobState, str | None] | None]


def _finished(kind: str, state: JobState, explain: bool) -> _Rule:
    def rule(job: Mapping[str, Any]) -> tuple[JobState, str | None] | None:
        cond = _condition(job.get("status") or {}, kind)
        if cond is None:
            return None
        return state, (_reason(cond) if explain else None)

    return rule


def _deleting(job: Mapping[str, Any]) -> tuple[JobState, str | None] | None:
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return JobState.RUNNING, "being deleted"
    return None


def _held(job: Mapping[str, Any]) -> tuple[JobState, str | None] | None:
    if not (job.get("spec") or {}).get("suspend"):
        return None
    queue = ((job.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    # Kueue re-suspends a Job it evicts (preemption, lost quota): the condition says why.
    cond = _condition(job.get("status") or {}, "Suspended")
    why = _reason(cond) if cond is not None and cond.get("reason") != "JobSuspended" else None
    if queue:
        where = f"waiting for Kueue to admit it from queue {queue}"
        return JobState.QUEUED, f"{where} ({why})" if why else where
    return JobState.QUEUED, why or "suspended"


def _active(job: Mapping[str, Any]) -> tuple[JobState, str | None] | None:
    status = job.get("status") or {}
    active = int(status.get("active") or 0)
    ready = status.get("ready")
    if active and (ready is None or int(ready) > 0):
        return JobState.RUNNING, None
    return None


# First match wins. Only ``Complete`` and ``Failed`` conditions with status True are
# final; ``SuccessCriteriaMet`` and ``FailureTarget`` come first while pods are still
# being terminated, so they read as RUNNING. A suspended Job has no pods and gets none
# until it is resumed: Kueue resumes it (``spec.suspend`` false) when it admits its
# Workload, so QUEUED comes before the pod counts. Ready pods mean RUNNING; pods that
# exist but are not ready yet (pulling, unschedulable) mean SUBMITTED.
_JOB_RULES: tuple[_Rule, ...] = (
    _finished("Complete", JobState.SUCCEEDED, explain=False),
    _finished("Failed", JobState.FAILED, explain=True),
    _finished("FailureTarget", JobState.RUNNING, explain=False),
    _finished("SuccessCriteriaMet", JobState.RUNNING, explain=False),
    _deleting,
    _held,
    _active,
)


def job_state(job: Mapping[str, Any]) -> tuple[JobState, str | None]:
    """A Job's state from its spec and status, by the first of :data:`_JOB_RULES` that
    matches; SUBMITTED when none does."""
    for rule in _JOB_RULES:
        found = rule(job)
        if found is not None:
            return found
    return JobState.SUBMITTED, None


def index_states(
    job: Mapping[str, Any], indexes: Iterable[int], running: Iterable[int] = ()
) -> dict[int, tuple[JobState, str | None]]:
    """The state of each experiment of an Indexed Job.

    ``running``: indexes whose pod is Running (from a pod list; the Job's status
    only counts them).
    """
    status = job.get("status") or {}
    completed = parse_indexes(status.get("completedIndexes"))
    failed = parse_indexes(status.get("failedIndexes"))
    whole, message = job_state(job)
    running_now = set(running)
    out: dict[int, tuple[JobState, str | None]] = {}
    for i in indexes:
        if i in completed:
            out[i] = (JobState.SUCCEEDED, None)
        elif i in failed:
            out[i] = (JobState.FAILED, "this experiment's pod failed")
        elif whole is JobState.FAILED:
            # BackoffLimitExceeded / DeadlineExceeded end every index still open.
            out[i] = (JobState.FAILED, message)
        elif whole is JobState.SUCCEEDED:
            out[i] = (JobState.SUCCEEDED, None)
        elif i in running_now:
            out[i] = (JobState.RUNNING, None)
        elif whole is JobState.QUEUED:
            out[i] = (JobState.QUEUED, message)
        else:
            out[i] = (JobState.SUBMITTED, None)
    return out


# -- addressing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterTarget:
    """How to reach a cluster again (recorded with every job).

    ``kind`` "kubeconfig": ``kubeconfig`` (a path, or several joined by ``:``) and
    ``context``. ``kind`` "gke": ``project``/``location``/``cluster`` through the GKE
    API (``endpoint`` overrides it), with ``cloud_key`` credentials.
    """

    kind: str
    namespace: str = "default"
    kubeconfig: str | None = None
    context: str | None = None
    project: str | None = None
    location: str | None = None
    cluster: str | None = None
    cloud_key: str | None = None
    endpoint: str | None = None

    @property
    def key(self) -> str:
        """One connection per key (the namespace is per request, not per connection)."""
        if self.kind == "gke":
            return f"gke:{self.project}/{self.location}/{self.cluster}@{self.endpoint or ''}"
        return f"kubeconfig:{self.kubeconfig}#{self.context or ''}"

    @property
    def display(self) -> str:
        if self.kind == "gke":
            return f"GKE cluster {self.cluster} ({self.project}, {self.location})"
        return f"context {self.context} of {self.kubeconfig}"

    def to_details(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_details(cls, data: Mapping[str, Any]) -> ClusterTarget:
        known = {
            k: (str(v) if v is not None else None)
            for k, v in data.items()
            if k in cls.__dataclass_fields__
        }
        if known.get("kind") not in ("kubeconfig", "gke"):
            raise ValidationError(f"no usable cluster address recorded ({dict(data)!r})")
        return cls(**known)  # type: ignore[arg-type]
