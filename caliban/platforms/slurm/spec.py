"""What caliban asks of Slurm, and how it reads Slurm's answers (pure).

A sweep goes to Slurm as one array job: a batch script whose task number
(``SLURM_ARRAY_TASK_ID``) picks one line of an argument file caliban writes
beside it, each line a caliban job id and that job's argv. The task runs the
sweep's image with ``docker run``, labelled like local job containers (or, with
``--runtime oci``, inside the image's OCI bundle: :mod:`.oci`). The
array's name (``caliban-<batch>``) and comment (the store id) let a re-run find
an array whose ``sbatch`` answer was lost before anything is sent again.

Without slurmdbd there is no ``sacct``: a job's state comes from ``squeue
--json`` while slurmctld remembers it (``MinJobAge``, 300 s by default) and
from the ``jobcomp/filetxt`` file afterwards (one line per finished job).

Standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from caliban.errors import ValidationError
from caliban.spec import JobState

NAME_PREFIX = "caliban-"
# The labels of local job containers (caliban.platforms.local.containers), so
# cleanup by label finds these too.
MANAGED_LABEL = "caliban.managed"
JOB_LABEL = "caliban.job"
XGROUP_LABEL = "caliban.xgroup"
STORE_LABEL = "caliban.store"
COMMENT_PREFIX = "caliban:store="
SCRIPT = "batch.sh"
ARGS = "args"
# Options caliban sets itself: given in --sbatch_args they would break the
# mapping of tasks to jobs or lose the logs.
OWNED_OPTIONS = (
    "--array",
    "-a",
    "--job-name",
    "-J",
    "--comment",
    "--output",
    "-o",
    "--error",
    "-e",
)
# Output of task i of a batch (``%a`` is Slurm's array task id).
LOG_PATTERN = "logs/%a.log"

# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What each task asks of the cluster; None: the partition's default."""

    partition: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_job: int | None = None
    gpus_per_job: int | None = None
    # "gres" (--gres=gpu:K, every Slurm) or "gpus" (--gpus=K, Slurm 19.05+ with cons_tres).
    gpu_flag: str = "gres"
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()

    def directives(self) -> list[str]:
        out: list[str] = []
        if self.partition:
            out.append(f"--partition={self.partition}")
        if self.time:
            out.append(f"--time={self.time}")
        if self.mem:
            out.append(f"--mem={self.mem}")
        if self.cpus_per_job:
            out.append(f"--cpus-per-task={self.cpus_per_job}")
        if self.gpus_per_job:
            if self.gpu_flag == "gpus":
                out.append(f"--gpus={self.gpus_per_job}")
            else:
                out.append(f"--gres=gpu:{self.gpus_per_job}")
        if self.account:
            out.append(f"--account={self.account}")
        if self.qos:
            out.append(f"--qos={self.qos}")
        return out


@dataclass(frozen=True)
class Task:
    job_id: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    """One submission: an array of ``tasks`` (or, ``array`` False, a single job
    running ``tasks[0]``) in ``workdir`` on the cluster's shared filesystem."""

    batch_id: str
    workdir: str
    tasks: tuple[Task, ...]
    store_id: str
    xgroup: str
    image: str
    max_parallel: int | None = None
    array: bool = True
    # Extra labels for every container (the test run's label).
    labels: Mapping[str, str] = field(default_factory=dict)
    # An image archive to load on a node that does not have the image.
    image_archive: str | None = None

    @property
    def name(self) -> str:
        return job_name(self.batch_id)

    @property
    def script_path(self) -> str:
        return f"{self.workdir}/{SCRIPT}"

    @property
    def args_path(self) -> str:
        return f"{self.workdir}/{ARGS}"

    def log_path(self, index: int) -> str:
        return f"{self.workdir}/{LOG_PATTERN.replace('%a', str(index))}"


def job_name(batch_id: str) -> str:
    return NAME_PREFIX + batch_id


def batch_of(name: str) -> str | None:
    """The batch id in a Slurm job name caliban gave, else None."""
    return name[len(NAME_PREFIX) :] if name.startswith(NAME_PREFIX) else None


def comment(store_id: str, labels: Mapping[str, str] | None = None) -> str:
    """The store a job belongs to, and the session's labels (a test run's), in
    one word: sbatch splits ``#SBATCH`` lines on spaces."""
    parts = [COMMENT_PREFIX + store_id]
    parts += [f"{k}={v}" for k, v in (labels or {}).items()]
    return re.sub(r"\s", "_", ";".join(parts))


def comment_labels(text: str) -> dict[str, str] | None:
    """The store (key ``store``) and labels of a comment caliban wrote, else None."""
    if not text.startswith(COMMENT_PREFIX):
        return None
    first, *rest = text.split(";")
    out = {"store": first[len(COMMENT_PREFIX) :]}
    for part in rest:
        key, _, value = part.partition("=")
        out[key] = value
    return out


# -- the argument file -------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_./=:,+@%-]+")


def quote(word: str) -> str:
    """``word`` as one shell word on one line.

    POSIX single quotes where they do (so a plain ``sh`` in an image without
    bash reads the line too); bash's ANSI-C ``$'...'`` only for words with
    control characters, so arguments with newlines still keep one task per line."""
    if _PLAIN.fullmatch(word):
        return word
    if not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in word):
        return "'" + word.replace("'", "'\\''") + "'"
    out = []
    for ch in word:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def args_line(task: Task) -> str:
    return " ".join(quote(w) for w in (task.job_id, *task.argv))


def args_file(tasks: Iterable[Task]) -> str:
    """Line ``i + 1`` is task ``i``: its job id, then its argv."""
    return "".join(args_line(t) + "\n" for t in tasks)


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'"}


def _ansi_c(line: str, i: int) -> tuple[str, int]:
    """The body of a ``$'...'`` word starting at ``line[i]`` (after ``$'``), and
    the index after its closing quote."""
    out: list[str] = []
    while line[i] != "'":
        if line[i] == "\\":
            esc = line[i + 1]
            if esc == "x":
                out.append(chr(int(line[i + 2 : i + 4], 16)))
                i += 4
            else:
                out.append(_ESCAPES.get(esc, esc))
                i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out), i + 1


def parse_args_line(line: str) -> Task:
    """The inverse of :func:`args_line` (the shell's ``eval set --`` reads it the same way)."""
    words: list[str] = []
    i, n = 0, len(line)
    try:
        while i < n:
            if line[i] in " \t":
                i += 1
                continue
            parts: list[str] = []
            while i < n and line[i] not in " \t":
                if line[i] == "'":
                    end = line.index("'", i + 1)
                    parts.append(line[i + 1 : end])
                    i = end + 1
                elif line.startswith("$'", i):
                    text, i = _ansi_c(line, i + 2)
                    parts.append(text)
                elif line[i] == "\\":
                    parts.append(line[i + 1])
                    i += 2
                else:
                    parts.append(line[i])
                    i += 1
            words.append("".join(parts))
    except (IndexError, ValueError):
        raise ValueError(f"unterminated quote in argument line {line[:80]!r}") from None
    if not words:
        raise ValueError("empty argument line")
    return Task(words[0], tuple(words[1:]))


# -- the batch script --------------------------------------------------------------------


def _sh(word: str) -> str:
    return "'" + word.replace("'", "'\"'\"'") + "'"


def directives(batch: Batch, resources: Resources) -> list[str]:
    """Every ``#SBATCH`` option of ``batch``, in order."""
    out = [
        f"--job-name={batch.name}",
        f"--comment={comment(batch.store_id, batch.labels)}",
        f"--output={batch.workdir}/{LOG_PATTERN if batch.array else 'logs/0.log'}",
        "--open-mode=append",
        "--ntasks=1",
    ]
    if batch.array:
        last = len(batch.tasks) - 1
        throttle = f"%{batch.max_parallel}" if batch.max_parallel else ""
        out.append(f"--array=0-{last}{throttle}")
    out += resources.directives()
    return out


def batch_script(
    batch: Batch,
    resources: Resources,
    *,
    docker: str = "docker",
    docker_args: Sequence[str] = (),
) -> str:
    """The script ``sbatch`` runs for every task of ``batch``."""
    labels = {
        MANAGED_LABEL: "true",
        **batch.labels,
        XGROUP_LABEL: batch.xgroup,
        STORE_LABEL: batch.store_id,
    }
    label_flags = " ".join(f"--label {_sh(f'{k}={v}')}" for k, v in labels.items())
    extra = " ".join(_sh(a) for a in docker_args)
    index = '"${SLURM_ARRAY_TASK_ID:?}"' if batch.array else "0"
    load = (
        '"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 ||'
        f' "$DOCKER" load -q -i {_sh(batch.image_archive)} >/dev/null\n'
        if batch.image_archive
        else ""
    )
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in directives(batch, resources)]
    lines += [f"#SBATCH {a}" for a in resources.sbatch_args]
    body = f"""\
# Written by caliban for xgroup {batch.xgroup}; task i runs line i+1 of {ARGS}.
set -u
DOCKER={_sh(docker)}
IMAGE={_sh(batch.image)}
line="$(sed -n "$(({index} + 1))p" {_sh(batch.args_path)})"
[ -n "$line" ] || {{ echo "caliban: no arguments for task {index}" >&2; exit 2; }}
eval "set -- $line"
job_id="$1"
shift
name="caliban-$job_id"
# Slurm names the GPUs it gave this task (host ids); the container sees them renumbered.
ids="${{SLURM_JOB_GPUS:-${{CUDA_VISIBLE_DEVICES:-}}}}"
gpu_flags=()
if [ -n "$ids" ]; then
  n=$(($(tr -cd , <<<"$ids" | wc -c) + 1))
  ordinals="$(seq -s, 0 $((n - 1)))"
  gpu_flags=(-e "CALIBAN_GPU_IDS=$ids" -e "NVIDIA_VISIBLE_DEVICES=$ids")
  gpu_flags+=(-e "CUDA_VISIBLE_DEVICES=$ordinals")
  # Only a node with NVIDIA's driver can hand GPUs to a container.
  [ -e /dev/nvidiactl ] && gpu_flags+=(--gpus "\\"device=$ids\\"")
fi
{load}# scancel sends SIGTERM to this script: take the container down with it.
trap '"$DOCKER" rm -f "$name" >/dev/null 2>&1; exit 143' TERM INT
"$DOCKER" run --rm --init --name "$name" --shm-size 8g \\
  --label "{JOB_LABEL}=$job_id" {label_flags} \\
  -e PYTHONUNBUFFERED=1 -e "CALIBAN_JOB_ID=$job_id" -e CALIBAN_XGROUP={_sh(batch.xgroup)} \\
  -e "SLURM_JOB_ID=${{SLURM_JOB_ID:-}}" -e "SLURM_ARRAY_JOB_ID=${{SLURM_ARRAY_JOB_ID:-}}" \\
  -e "SLURM_ARRAY_TASK_ID=${{SLURM_ARRAY_TASK_ID:-}}" \\
  "${{gpu_flags[@]}}" {extra} "$IMAGE" "$@" &
wait $!
"""
    return "\n".join(lines) + "\n" + body


def platform_id(array_job_id: str, index: int, *, array: bool = True) -> str:
    return f"{array_job_id}_{index}" if array else array_job_id


def parse_sbatch(text: str) -> str:
    """The job id ``sbatch --parsable`` printed (``ID`` or ``ID;CLUSTER``)."""
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    if not lines:
        raise ValueError("sbatch printed no job id")
    head = lines[-1].split(";", 1)[0]
    if not head.isdigit():
        raise ValueError(f"sbatch printed {lines[-1]!r}, not a job id")
    return head


# -- validation --------------------------------------------------------------------------

_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_minutes(text: str) -> float | None:
    """Slurm's time syntax (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``) in minutes; None for UNLIMITED/INFINITE."""
    t = text.strip()
    if t.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    m = _TIME.fullmatch(t)
    if not m:
        raise ValidationError(
            f"--time {text!r} is not a Slurm time (MINUTES, HH:MM:SS or DAYS-HH:MM:SS)"
        )
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        hours, mins, secs = int(a), int(b or 0), int(c or 0)
        return int(days) * 1440 + hours * 60 + mins + secs / 60
    if c is not None:  # H:M:S
        return int(a) * 60 + int(b) + int(c) / 60
    if b is not None:  # M:S
        return int(a) + int(b) / 60
    return float(a)


_MEM = re.compile(r"\d+[KMGT]?", re.IGNORECASE)


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_minutes: float | None
    allow_qos: tuple[str, ...] | None  # None: ALL
    nodes: str


def parse_key_values(line: str) -> dict[str, str]:
    """One ``scontrol show ... -o`` / jobcomp line as a dict (``Key=Value`` words)."""
    out: dict[str, str] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep and key:
            out[key] = value
    return out


def parse_partitions(text: str) -> dict[str, Partition]:
    out: dict[str, Partition] = {}
    for line in text.splitlines():
        kv = parse_key_values(line)
        name = kv.get("PartitionName")
        if not name:
            continue
        qos = kv.get("AllowQos", "ALL")
        out[name] = Partition(
            name=name,
            default=kv.get("Default") == "YES",
            max_minutes=parse_minutes(kv.get("MaxTime", "UNLIMITED")),
            allow_qos=None if qos == "ALL" else tuple(qos.split(",")),
            nodes=kv.get("Nodes", ""),
        )
    return out


_GPU_GRES = re.compile(r"gpu(?::[^:(,]+)?:(\d+)")


def max_gpus_per_node(scontrol_nodes: str) -> int:
    """The most GPUs any node offers (``Gres=gpu:4`` or ``gpu:a100:4(S:0-1)``)."""
    best = 0
    for line in scontrol_nodes.splitlines():
        gres = parse_key_values(line).get("Gres", "")
        for part in gres.split(","):
            m = _GPU_GRES.match(part)
            if m:
                best = max(best, int(m.group(1)))
    return best


def check_resources(
    resources: Resources,
    partitions: Mapping[str, Partition],
    *,
    max_gpus: int,
    qos_names: Sequence[str] | None,
) -> Partition:
    """Refuse what the cluster cannot run, naming what it has. ``qos_names`` None:
    the cluster keeps no accounting, so it has no QOS."""
    check_syntax(resources)
    if resources.partition is not None:
        part = partitions.get(resources.partition)
        if part is None:
            names = ", ".join(sorted(partitions)) or "none"
            raise ValidationError(
                f"unknown partition {resources.partition!r}; this cluster has: {names}"
            )
    else:
        defaults = [p for p in partitions.values() if p.default]
        if not defaults:
            raise ValidationError(
                "the cluster has no default partition; choose one with --partition "
                f"({', '.join(sorted(partitions)) or 'none'})"
            )
        part = defaults[0]
    if resources.time is not None:
        minutes = parse_minutes(resources.time)
        if part.max_minutes is not None and (minutes is None or minutes > part.max_minutes):
            raise ValidationError(
                f"--time {resources.time} is more than partition {part.name} allows "
                f"({format_minutes(part.max_minutes)})"
            )
    if resources.gpus_per_job and resources.gpus_per_job > max_gpus:
        raise ValidationError(
            f"--gpus_per_job {resources.gpus_per_job} is more than any node has ({max_gpus})"
        )
    if resources.qos is not None:
        if qos_names is None:
            raise ValidationError(
                f"unknown QOS {resources.qos!r}: this cluster keeps no accounting "
                "(no slurmdbd), so it has no QOS"
            )
        if resources.qos not in qos_names:
            raise ValidationError(
                f"unknown QOS {resources.qos!r}; this cluster has: "
                f"{', '.join(sorted(qos_names)) or 'none'}"
            )
        if part.allow_qos is not None and resources.qos not in part.allow_qos:
            raise ValidationError(
                f"partition {part.name} does not allow QOS {resources.qos!r} "
                f"(it allows: {', '.join(part.allow_qos)})"
            )
    return part


def check_syntax(resources: Resources) -> None:
    """What can be refused without asking the cluster."""
    if resources.time is not None:
        parse_minutes(resources.time)
    if resources.mem is not None and not _MEM.fullmatch(resources.mem):
        raise ValidationError(f"--mem {resources.mem!r} is not a Slurm size such as 4G or 500M")
    if resources.gpu_flag not in ("gres", "gpus"):
        raise ValidationError(f"GPU flag {resources.gpu_flag!r}: use 'gres' or 'gpus'")
    for arg in resources.sbatch_args:
        option = arg.split("=", 1)[0]
        if option in OWNED_OPTIONS:
            raise ValidationError(
                f"--sbatch_args may not set {option}: caliban sets it "
                "(use --max_parallel for the array's limit)"
            )


def format_minutes(minutes: float) -> str:
    whole = int(minutes)
    days, rest = divmod(whole, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


# -- states ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """A task's state as caliban records it, and Slurm's own word for it."""

    state: JobState
    slurm_state: str
    exit_code: int | None = None
    message: str | None = None


_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SPECIAL_EXIT"}
_RUNNING = {"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
# Ends that are not the program's own failure: said in the message, kept FAILED
# so `caliban resubmit` runs them again.
_ENDED_BY_SLURM = {
    "TIMEOUT": "the time limit was reached",
    "OUT_OF_MEMORY": "the task ran out of memory",
    "PREEMPTED": "the task was preempted",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "the deadline passed",
    "REVOKED": "the job was revoked",
}


def exit_from_wait_status(raw: int) -> int:
    """A raw wait status (``squeue --json``'s ``exit_code``) as a shell exit code."""
    signal = raw & 0x7F
    return 128 + signal if signal else (raw >> 8) & 0xFF


def exit_from_pair(text: str) -> int | None:
    """``ExitCode=3:0`` (code:signal, from scontrol and jobcomp) as a shell exit code."""
    code, _, sig = text.partition(":")
    try:
        c, s = int(code), int(sig or 0)
    except ValueError:
        return None
    return 128 + s if s else c


def status_of(slurm_state: str, exit_code: int | None, reason: str | None = None) -> Status:
    """Slurm's state word (``CANCELLED by 0`` included) as caliban's JobState."""
    word = slurm_state.split()[0].upper() if slurm_state.strip() else "UNKNOWN"
    if word in _PENDING:
        why = f"pending: {reason}" if reason and reason != "None" else None
        return Status(JobState.SUBMITTED, word, message=why)
    if word in _RUNNING:
        return Status(JobState.RUNNING, word)
    if word == "COMPLETED":
        return Status(JobState.SUCCEEDED, word, exit_code if exit_code is not None else 0)
    if word == "CANCELLED":
        return Status(JobState.STOPPED, word, exit_code, "cancelled on Slurm")
    if word == "FAILED":
        code = exit_code if exit_code else 1
        return Status(JobState.FAILED, word, code, f"exited with code {code}")
    if word in _ENDED_BY_SLURM:
        return Status(JobState.FAILED, word, exit_code, f"{word}: {_ENDED_BY_SLURM[word]}")
    return Status(JobState.UNKNOWN, word, exit_code, f"Slurm state {word}")


def expand_tasks(text: str) -> list[int]:
    """Task ids of a pending array's ``ArrayTaskId`` / ``array_task_string``
    (``2-3%2``, ``1,4-9:2``)."""
    spec = text.split("%", 1)[0].strip()
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        first, last = int(lo), int(hi or lo)
        out += range(first, last + 1, int(step or 1))
    return out


@dataclass(frozen=True)
class Seen:
    """One task (or single job) in Slurm's answer, keyed by its platform id."""

    key: str
    array_job_id: str
    task: int | None
    name: str
    comment: str
    status: Status


def _keys(
    array_job_id: int, job_id: int, task: object, task_string: str
) -> list[tuple[str, str, int | None]]:
    if not array_job_id:  # a single job
        return [(str(job_id), str(job_id), None)]
    if isinstance(task, int):
        return [(f"{array_job_id}_{task}", str(array_job_id), task)]
    return [(f"{array_job_id}_{t}", str(array_job_id), t) for t in expand_tasks(task_string)]


def _num(value: object) -> int:
    # 22.05 prints plain numbers; later versions wrap them as {"set": .., "number": ..}.
    if isinstance(value, dict):
        value = value.get("number", 0) if value.get("set", True) else 0
    return int(value) if isinstance(value, (int, float)) else 0


def parse_squeue_json(text: str) -> Iterator[Seen]:
    """Every task ``squeue --json`` reports, pending array tasks one by one."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"squeue --json printed no JSON: {exc}") from None
    for job in doc.get("jobs", []):
        state = job.get("job_state", "")
        if isinstance(state, list):  # newer versions: a list of flags
            state = state[0] if state else ""
        raw = _num(job.get("exit_code", 0))
        ended = str(state).upper() not in _PENDING | _RUNNING
        status = status_of(
            str(state), exit_from_wait_status(raw) if ended else None, job.get("state_reason")
        )
        task = job.get("array_task_id")
        if isinstance(task, dict):
            task = task.get("number") if task.get("set") else None
        for key, array_id, index in _keys(
            _num(job.get("array_job_id", 0)),
            _num(job.get("job_id", 0)),
            task,
            str(job.get("array_task_string") or ""),
        ):
            yield Seen(
                key, array_id, index, str(job.get("name", "")), str(job.get("comment", "")), status
            )


def parse_records(text: str) -> Iterator[Seen]:
    """Tasks in ``scontrol show job -o`` output or jobcomp/filetxt lines (no comment there)."""
    for line in text.splitlines():
        kv = parse_key_values(line)
        if "JobId" not in kv or "JobState" not in kv:
            continue
        exit_code = exit_from_pair(kv.get("ExitCode", "0:0"))
        word = kv["JobState"].upper()
        status = status_of(
            word, exit_code if word not in _PENDING | _RUNNING else None, kv.get("Reason")
        )
        array = kv.get("ArrayJobId")
        task = kv.get("ArrayTaskId")
        keys: list[tuple[str, str, int | None]]
        if array and task is not None and array != "0":
            if task.isdigit():
                keys = [(f"{array}_{task}", array, int(task))]
            else:
                keys = [(f"{array}_{t}", array, t) for t in expand_tasks(task)]
        else:
            keys = [(kv["JobId"], kv["JobId"], None)]
        for key, array_id, index in keys:
            yield Seen(
                key,
                array_id,
                index,
                kv.get("JobName", kv.get("Name", "")),
                kv.get("Comment", ""),
                status,
            )


def parse_sacct(text: str) -> Iterator[Seen]:
    """``sacct -n -P -X --format=JobID,JobName,State,ExitCode`` lines (clusters with
    slurmdbd): ``123_4|caliban-B|FAILED|3:0``."""
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_id, name, state, code = parts[:4]
        array, sep, task = job_id.partition("_")
        ended = state.split()[0].upper() not in _PENDING | _RUNNING if state else False
        status = status_of(state, exit_from_pair(code) if ended else None)
        if sep and task.isdigit():
            yield Seen(job_id, array, int(task), name, "", status)
        elif not sep:
            yield Seen(job_id, job_id, None, name, "", status)
