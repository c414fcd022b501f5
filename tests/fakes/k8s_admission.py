"""Admission for the fake apiserver: resource types, Job validation and defaulting.

What a real apiserver checks and fills in when a Job is created, limited to what a submitter
can get wrong (names, labels, restartPolicy, containers, Indexed-mode rules) and what clients
read back (parallelism/completions/backoffLimit defaults, selector, job-name labels).
"""

from __future__ import annotations

from .k8s_store import (
    MAX_GENERATE_NAME_PREFIX,
    Cause,
    JsonObj,
    ResourceType,
    check_annotations,
    check_labels,
    check_name,
    invalid_value,
    rand_suffix,
    required_value,
    unsupported_value,
)

JOBS = ResourceType(
    "jobs",
    "Job",
    "batch/v1",
    "batch",
    name_max=63,
    field_paths=frozenset({"metadata.name", "metadata.namespace", "status.successful"}),
)
PODS = ResourceType(
    "pods",
    "Pod",
    "v1",
    "",
    field_paths=frozenset(
        {
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
        }
    ),
)
CONFIGMAPS = ResourceType("configmaps", "ConfigMap", "v1", "")
NAMESPACES = ResourceType("namespaces", "Namespace", "v1", "", name_max=63)

JOB_NAME_LABEL = "job-name"
CONTROLLER_UID_LABEL = "controller-uid"
BATCH_JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
BATCH_CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


# --- Validation and defaults ---------------------------------------------------------------


def _int_field(spec: JsonObj, key: str, causes: list[Cause], *, minimum: int = 0) -> None:
    value = spec.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        causes.append(invalid_value(f"spec.{key}", value, "must be an integer"))
    elif value < minimum:
        causes.append(
            invalid_value(f"spec.{key}", value, f"must be greater than or equal to {minimum}")
        )


def validate_job(job: JsonObj) -> list[Cause]:
    """The subset of batch/v1 Job validation a submitter can trip over."""
    causes: list[Cause] = []
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return [required_value("spec")]
    for key in (
        "parallelism",
        "completions",
        "backoffLimit",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
        "ttlSecondsAfterFinished",
    ):
        _int_field(spec, key, causes)
    _int_field(spec, "activeDeadlineSeconds", causes, minimum=1)
    mode = spec.get("completionMode", "NonIndexed")
    if mode not in ("NonIndexed", "Indexed"):
        causes.append(unsupported_value("spec.completionMode", mode, ["NonIndexed", "Indexed"]))
    if mode == "Indexed" and spec.get("completions") is None:
        causes.append(required_value("spec.completions", "when completion mode is Indexed"))
    if spec.get("backoffLimitPerIndex") is not None and mode != "Indexed":
        causes.append(
            invalid_value(
                "spec.backoffLimitPerIndex",
                spec["backoffLimitPerIndex"],
                "requires indexed completion mode",
            )
        )
    template = spec.get("template")
    if not isinstance(template, dict):
        return [*causes, required_value("spec.template")]
    tmeta = template.get("metadata") or {}
    causes += check_labels(tmeta.get("labels"), "spec.template.metadata.labels")
    causes += check_annotations(tmeta.get("annotations"), "spec.template.metadata.annotations")
    pod_spec = template.get("spec")
    if not isinstance(pod_spec, dict):
        return [*causes, required_value("spec.template.spec")]
    # A Job's pods may never restart in place: the apiserver rejects "Always", which is also
    # what an unset restartPolicy defaults to, so a template without one fails here.
    policy = pod_spec.get("restartPolicy", "Always")
    if policy not in ("OnFailure", "Never"):
        causes.append(
            unsupported_value("spec.template.spec.restartPolicy", policy, ["OnFailure", "Never"])
        )
    if spec.get("podFailurePolicy") is not None and policy != "Never":
        causes.append(
            invalid_value(
                "spec.template.spec.restartPolicy",
                policy,
                'only "Never" is supported when podFailurePolicy is specified',
            )
        )
    causes += validate_containers(pod_spec, "spec.template.spec")
    return causes


def validate_containers(pod_spec: JsonObj, prefix: str) -> list[Cause]:
    causes: list[Cause] = []
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [required_value(f"{prefix}.containers")]
    seen: set[str] = set()
    for i, container in enumerate(containers):
        where = f"{prefix}.containers[{i}]"
        if not isinstance(container, dict):
            causes.append(invalid_value(where, str(container), "must be an object"))
            continue
        name = container.get("name")
        if not name:
            causes.append(required_value(f"{where}.name"))
        else:
            causes += check_name(str(name), f"{where}.name", 63, label_only=True)
            if name in seen:
                causes.append(
                    Cause(f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"')
                )
            seen.add(str(name))
        if not container.get("image"):
            causes.append(required_value(f"{where}.image"))
    return causes


def default_job(job: JsonObj) -> None:
    """Fill what the apiserver's defaulting and the Job strategy add on create."""
    meta = job["metadata"]
    spec = job["spec"]
    uid = meta["uid"]
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    # With per-index limits the global limit defaults to "unlimited" (MaxInt32).
    spec.setdefault(
        "backoffLimit", 2147483647 if spec.get("backoffLimitPerIndex") is not None else 6
    )
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", None)
    if spec["manualSelector"] is None:
        del spec["manualSelector"]
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    job_labels = {
        BATCH_CONTROLLER_UID_LABEL: uid,
        BATCH_JOB_NAME_LABEL: meta["name"],
        CONTROLLER_UID_LABEL: uid,
        JOB_NAME_LABEL: meta["name"],
    }
    spec.setdefault("selector", {"matchLabels": {BATCH_CONTROLLER_UID_LABEL: uid}})
    tmeta = spec["template"].setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), **job_labels}
    # The strategy also copies the job labels onto the Job itself when none are given.
    if not meta.get("labels"):
        meta["labels"] = dict(job_labels)
    job.setdefault("status", {})
    job["apiVersion"] = "batch/v1"
    job["kind"] = "Job"


def generated_name(prefix: str) -> str:
    return prefix[:MAX_GENERATE_NAME_PREFIX] + rand_suffix()
