"""What caliban asks of Slurm: the array, its argument file and its batch script (pure).

A sweep goes to Slurm as one array job: a batch script whose task number
(``SLURM_ARRAY_TASK_ID``) picks one line of an argument file caliban writes
beside it, each line a caliban job id and that job's argv. The task runs the
sweep's image with ``docker run``, labelled like local job containers (or, with
``--runtime oci``, inside the image's OCI bundle: :mod:`.oci`). The
array's name (``caliban-<batch>``) and comment (the store id) let a re-run find
an array whose ``sbatch`` answer was lost before anything is sent again.

What the cluster allows is checked in :mod:`.limits`; Slurm's answers about
tasks are read in :mod:`.states`.

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
