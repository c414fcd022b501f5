"""The OCI runtime path of ``caliban slurm submit`` (``--runtime oci``), pure.

For clusters without Docker on the nodes: the image's filesystem is exported
once per image to a bundle (``bundle.py``) and every task is started by Slurm
itself with ``sbatch --container=BUNDLE``, which runs the batch script inside
the bundle through the runtime that ``oci.conf`` names (runc here).

What Slurm 22.05 does with a bundle, and why this module is shaped by it:

- it reads ``BUNDLE/config.json`` and always points ``root.path`` at
  ``BUNDLE/rootfs``, so the rootfs cannot live elsewhere and one bundle serves
  every task of every sweep of that image: the rootfs is mounted read-only
  (with a fresh ``/tmp``), so no task can change what the next one sees;
- it replaces ``process.args`` with the batch script (mounted at
  ``/tmp/slurm/startup``), so the image's entrypoint and command cannot come
  from ``config.json``: the script runs them;
- it appends the batch script's environment (what sbatch ran with) to
  ``process.env``, so the script starts the program under ``env -i`` with exactly
  the image's environment plus the variables caliban gives every job (as
  ``docker run`` does);
- the script is the container's PID 1, which ignores signals it has no
  handler for: it runs the program as a child, passes SIGTERM on (scancel) and
  exits with the child's code, so a failing task is FAILED with its code;
- only ``RunTimeRun`` hands the program's exit status back to Slurm (with
  ``RunTimeCreate``/``RunTimeStart`` the job ends with the status of
  ``start``), so the cluster's ``oci.conf`` must use ``RunTimeRun``.

The task's arguments come from the argument file caliban writes for every
batch (``spec.args_file``); the Slurm folder holding it is bind-mounted into
the container, read-only, at the same path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from caliban.errors import ValidationError
from caliban.platforms.slurm import spec
from caliban.platforms.slurm.spec import Batch, Resources

# A file the export puts at the root of every bundle: a task that does not see
# it is not inside the bundle (a node whose Slurm ignored --container because
# it has no oci.conf) and stops before running anything on the host.
MARKER = ".caliban-bundle"
CONFIG = "config.json"
ROOTFS = "rootfs"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# `docker run`'s default capabilities, so a program may do in a bundle what it
# may do in a container (chown its files, bind a low port...).
_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]


@dataclass(frozen=True)
class ImageProcess:
    """What ``docker run IMAGE`` would start, read from the image's config."""

    env: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "env": list(self.env),
            "entrypoint": list(self.entrypoint),
            "cmd": list(self.cmd),
            "cwd": self.cwd,
            "uid": self.uid,
            "gid": self.gid,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ImageProcess:
        def strs(key: str) -> tuple[str, ...]:
            value = data.get(key)
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        uid, gid = data.get("uid", 0), data.get("gid", 0)
        return cls(
            env=strs("env"),
            entrypoint=strs("entrypoint"),
            cmd=strs("cmd"),
            cwd=str(data.get("cwd") or "/"),
            uid=uid if isinstance(uid, int) else 0,
            gid=gid if isinstance(gid, int) else 0,
        )


def _ids(table: str, name: str) -> tuple[int, int | None] | None:
    """``name``'s id, and (passwd) its primary group, in an /etc/passwd or /etc/group text."""
    for line in table.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            gid = fields[3] if len(fields) > 3 else ""
            return int(fields[2]), int(gid) if gid.isdigit() else None
    return None


def resolve_user(user: str, passwd: str = "", group: str = "") -> tuple[int, int]:
    """The image's ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``) as
    numbers, names looked up in the exported rootfs's own files."""
    text = user.strip()
    if not text:
        return 0, 0
    name, _, grp = text.partition(":")
    if name.isdigit():
        uid = int(name)
        gid = uid
        for line in passwd.splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[2] == name and fields[3].isdigit():
                gid = int(fields[3])
                break
    elif name == "root":
        uid, gid = 0, 0
    else:
        found = _ids(passwd, name)
        if found is None:
            raise ValidationError(
                f"the image runs as user {name!r}, which its /etc/passwd does not have"
            )
        uid, primary = found
        gid = primary if primary is not None else uid
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            found = _ids(group, grp)
            if found is None:
                raise ValidationError(
                    f"the image runs as group {grp!r}, which its /etc/group does not have"
                )
            gid = found[0]
    return uid, gid


def image_process(
    image_config: Mapping[str, object], passwd: str = "", group: str = ""
) -> ImageProcess:
    """The process of an image from its config (``docker image inspect``'s ``Config``)."""

    def strs(key: str) -> tuple[str, ...]:
        value = image_config.get(key)
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    env = strs("Env")
    if not any(e.startswith("PATH=") for e in env):
        env = (f"PATH={_DEFAULT_PATH}", *env)  # as Docker adds it
    uid, gid = resolve_user(str(image_config.get("User") or ""), passwd, group)
    if not any(e.startswith("HOME=") for e in env):
        env = (*env, "HOME=/root" if uid == 0 else "HOME=/")
    return ImageProcess(
        env=env,
        entrypoint=strs("Entrypoint"),
        cmd=strs("Cmd"),
        cwd=str(image_config.get("WorkingDir") or "/"),
        uid=uid,
        gid=gid,
    )


def _bind(path: str, *, readonly: bool) -> dict[str, object]:
    options = ["rbind", "nosuid", "nodev"] + (["ro"] if readonly else [])
    return {"destination": path, "type": "none", "source": path, "options": options}


def config_json(process: ImageProcess, shared: Sequence[str]) -> dict[str, object]:
    """The bundle's ``config.json``: the image's process, a read-only root
    shared by all tasks, and the Slurm folders ``shared`` (where the argument
    files are) mounted at their own paths."""
    caps = list(_CAPABILITIES)
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "none",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        },
        # The root is read-only: scratch space is a tmpfs per task. Slurm mounts
        # the batch script and the output files under /tmp/slurm, in here.
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
        # The host's network (no network namespace), so its name resolution too.
        _bind("/etc/resolv.conf", readonly=True),
        _bind("/etc/hosts", readonly=True),
    ]
    mounts += [_bind(path, readonly=True) for path in sorted(set(shared))]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": process.uid, "gid": process.gid},
            # Slurm puts the batch script here; this is what `runc run` by hand starts.
            "args": ["/bin/sh"],
            "env": list(process.env),
            "cwd": process.cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": False,
        },
        "root": {"path": ROOTFS, "readonly": True},
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/timer_list",
                "/proc/sched_debug",
                "/sys/firmware",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }


def shared_of(config: Mapping[str, object]) -> list[str]:
    """The Slurm folders an existing ``config.json`` mounts (see :func:`config_json`)."""
    fixed = {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/tmp"}
    fixed |= {"/etc/resolv.conf", "/etc/hosts"}
    mounts = config.get("mounts")
    out: list[str] = []
    for m in mounts if isinstance(mounts, list) else []:
        if isinstance(m, dict) and m.get("type") == "none" and m.get("destination") not in fixed:
            out.append(str(m.get("destination")))
    return out


def dumps(config: Mapping[str, object]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _sh(word: str) -> str:
    return "'" + word.replace("'", "'\"'\"'") + "'"


def _words(words: Sequence[str]) -> str:
    return " ".join(_sh(w) for w in words)


def batch_script(batch: Batch, resources: Resources, process: ImageProcess, bundle: str) -> str:
    """The script ``sbatch --container`` runs, inside the bundle, for every task."""
    index = '"${SLURM_ARRAY_TASK_ID:?}"' if batch.array else "0"
    lines = ["#!/bin/sh"]
    lines += [f"#SBATCH {d}" for d in spec.directives(batch, resources)]
    lines.append(f"#SBATCH --container={bundle}")
    lines += [f"#SBATCH {a}" for a in resources.sbatch_args]
    env = _words(process.env)
    body = f"""\
# Written by caliban for xgroup {batch.xgroup}; task i runs line i+1 of {spec.ARGS},
# inside the image's OCI bundle (this script is the container's PID 1).
set -u
[ -e /{MARKER} ] || {{
  echo "caliban: this task is not inside the OCI bundle: Slurm on $(hostname) ignored" \\
    "--container (no oci.conf next to its slurm.conf?)" >&2
  exit 2
}}
index={index}
line=""
i=0
while IFS= read -r l; do
  [ "$i" -eq "$index" ] && {{ line="$l"; break; }}
  i=$((i + 1))
done <{_sh(batch.args_path)}
[ -n "$line" ] || {{ echo "caliban: no arguments for task $index" >&2; exit 2; }}
case "$line" in
*"\\$'"*)
  # Arguments with control characters are written in bash's $'...' quoting.
  if [ -z "${{BASH_VERSION:-}}" ]; then
    command -v bash >/dev/null 2>&1 && exec bash "$0" "$@"
    echo "caliban: task $index has arguments with control characters; the image needs bash" >&2
    exit 2
  fi
  ;;
esac
eval "set -- $line"
job_id="$1"
shift
[ "$#" -gt 0 ] || set -- {_words(process.cmd)}
set -- {_words(process.entrypoint)} "$@"
[ "$#" -gt 0 ] || {{ echo "caliban: the image has no entrypoint or command to run" >&2; exit 2; }}
ids="${{SLURM_JOB_GPUS:-${{CUDA_VISIBLE_DEVICES:-}}}}"
# Slurm's GPU ids as they are: the bundle gets no device files to renumber (untested).
[ -z "$ids" ] || set -- "CALIBAN_GPU_IDS=$ids" "CUDA_VISIBLE_DEVICES=$ids" \\
  "NVIDIA_VISIBLE_DEVICES=$ids" "$@"
# Exactly the image's environment and caliban's job variables, as in a container of it.
env -i {env} \\
  PYTHONUNBUFFERED=1 "CALIBAN_JOB_ID=$job_id" CALIBAN_XGROUP={_sh(batch.xgroup)} \\
  "SLURM_JOB_ID=${{SLURM_JOB_ID:-}}" "SLURM_ARRAY_JOB_ID=${{SLURM_ARRAY_JOB_ID:-}}" \\
  "SLURM_ARRAY_TASK_ID=${{SLURM_ARRAY_TASK_ID:-}}" \\
  "$@" &
child=$!
# PID 1 ignores signals it does not handle: pass scancel's SIGTERM on.
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
  wait "$child"
  code=$?
  kill -0 "$child" 2>/dev/null || break
done
exit "$code"
"""
    return "\n".join(lines) + "\n" + body
