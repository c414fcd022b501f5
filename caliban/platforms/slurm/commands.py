"""Slurm's own commands, run here or on a login node over ssh.

Every call is one process (``anyio.run_process``): ``sbatch``, ``squeue``,
``scontrol``, ``scancel``, ``sacctmgr``, and ``cat``/``tail`` for the files
tasks write. With a host (``user@login``) the system ssh client runs them, so
the user's ssh config, agent and jump hosts apply; ``BatchMode`` makes a
missing key fail at once instead of prompting.

Failures become caliban errors here: what the cluster refuses as input
(an unknown partition or QOS) is a :class:`ValidationError`, a cluster that
cannot be reached (ssh refused, slurmctld down, no Slurm commands) a
:class:`BackendError` or :class:`ValidationError` as the CLI's exit codes
want: 2 when nothing can work as asked, 1 when trying again may.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from caliban.errors import BackendError, ValidationError
from caliban.platforms.slurm import limits, spec, states

# How long one command may take: slurmctld answers in milliseconds, ssh may
# need a few seconds to connect.
TIMEOUT = 120.0
SSH_CONNECT_TIMEOUT = 15

# What the Slurm commands (and ssh) get of caliban's environment. sbatch's default,
# --export=ALL, hands its whole environment to the job: slurmctld keeps a copy with
# the job's state and the batch script runs in it. The tokens and keys a user
# exported for other tools have no business there; the commands need only their own
# configuration, the paths, the locale, and what the docker client on the node reads.
_KEPT = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
        "LD_LIBRARY_PATH", "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK", "KRB5CCNAME",
        "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH",
        "DOCKER_TLS_VERIFY", "DOCKER_API_VERSION",
    }
)  # fmt: skip
# Slurm's own settings (SLURM_CONF, SBATCH_PARTITION, SQUEUE_FORMAT ...) and the locale.
_KEPT_PREFIXES = (
    "LC_", "SLURM_", "SBATCH_", "SQUEUE_", "SACCT_", "SCANCEL_", "SCONTROL_", "SINFO_",
)  # fmt: skip
# A token for slurmrestd: a credential, whatever its prefix.
_DROPPED = frozenset({"SLURM_JWT"})


def command_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` the Slurm commands run with (see :data:`_KEPT`)."""
    return {
        name: value
        for name, value in environ.items()
        if (name in _KEPT or name.startswith(_KEPT_PREFIXES)) and name not in _DROPPED
    }


_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|"
    r"Zero Bytes were transmitted|Communication connection failure",
    re.IGNORECASE,
)
_BAD_PARTITION = re.compile(r"invalid partition (?:name )?specified(?:: (\S+))?", re.IGNORECASE)
_BAD_QOS = re.compile(r"invalid qos specification", re.IGNORECASE)
_BAD_ACCOUNT = re.compile(r"invalid account", re.IGNORECASE)
_NOT_AVAILABLE = re.compile(r"Requested node configuration is not available", re.IGNORECASE)
# The exit status `read` gives a file that is not there (not one tail or ssh uses).
_NO_FILE = 66
_BAD_TIME = re.compile(r"(invalid time limit|time limit exceeds)", re.IGNORECASE)


@dataclass(frozen=True)
class Cluster:
    """Where the Slurm commands run: here (``host`` None) or on ``host`` over ssh."""

    host: str | None = None
    ssh_options: tuple[str, ...] = ()
    # The environment caliban runs in (empty: this process's); the commands get the
    # part of it command_environ keeps.
    environ: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """How jobs record the cluster they went to."""
        return self.host or "local"

    def argv(self, command: Sequence[str]) -> list[str]:
        if self.host is None:
            return list(command)
        return [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
            *self.ssh_options,
            self.host,
            "--",
            shlex.join(command),
        ]


class Slurm:
    """One cluster's commands."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._jobcomp: str | None = None
        self._config: dict[str, str] | None = None

    @property
    def where(self) -> str:
        return f"on {self.cluster.host}" if self.cluster.host else "here"

    async def run(
        self, command: Sequence[str], *, input: bytes | None = None, what: str | None = None
    ) -> str:
        """``command``'s standard output; a failure raised as a caliban error."""
        result = await self.run_raw(command, input=input)
        if result.returncode != 0:
            raise self.failure(command, result, what or command[0])
        return result.stdout.decode(errors="replace")

    async def run_raw(
        self, command: Sequence[str], *, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        argv = self.cluster.argv(command)
        env = command_environ(self.cluster.environ or os.environ)
        try:
            with anyio.fail_after(TIMEOUT):
                return await anyio.run_process(argv, input=input, check=False, env=env)
        except FileNotFoundError:
            if self.cluster.host is None:
                raise ValidationError(
                    f"no Slurm commands here ({argv[0]} is not on PATH); run caliban on a "
                    "login node or pass --host USER@LOGIN",
                    hint="scripts/slurm-cluster.sh start runs a one-node cluster on this machine",
                ) from None
            raise ValidationError("no ssh client on PATH to reach the login node") from None
        except TimeoutError:
            raise BackendError(
                f"{command[0]} {self.where} did not answer within {TIMEOUT:.0f} s", retryable=True
            ) from None

    def failure(
        self, command: Sequence[str], result: subprocess.CompletedProcess[bytes], what: str
    ) -> Exception:
        """The caliban error for ``command`` (``what`` in messages) ending as ``result``
        did: the one place that reads Slurm's and ssh's failures."""
        err = (result.stderr or b"").decode(errors="replace").strip()
        last = err.splitlines()[-1] if err else f"exit status {result.returncode}"
        if self.cluster.host is not None and result.returncode == 255:
            return BackendError(f"cannot reach {self.cluster.host} over ssh: {last}")
        if result.returncode == 127 or "command not found" in err:
            return ValidationError(
                f"no Slurm commands {self.where} ({command[0]} not found)",
                hint="run caliban on a login node, or pass --host USER@LOGIN",
            )
        if _UNREACHABLE.search(err):
            return BackendError(
                f"the Slurm controller {self.where} does not answer: {last}", retryable=True
            )
        return BackendError(f"{what} {self.where} failed: {last}")

    # -- reading the cluster ----------------------------------------------------------

    async def partitions(self) -> dict[str, limits.Partition]:
        return limits.parse_partitions(
            await self.run(["scontrol", "show", "partition", "-o"], what="scontrol show partition")
        )

    async def max_gpus(self, partition: limits.Partition) -> int:
        command = ["scontrol", "show", "node", "-o"]
        if partition.nodes and partition.nodes not in ("ALL", "(null)"):
            command.append(partition.nodes)
        return limits.max_gpus_per_node(await self.run(command, what="scontrol show node"))

    async def qos_names(self) -> list[str] | None:
        """The cluster's QOS, or None when it keeps no accounting (no slurmdbd)."""
        result = await self.run_raw(["sacctmgr", "-nP", "show", "qos", "format=name"])
        if result.returncode != 0:
            return None
        return [x.strip() for x in result.stdout.decode().splitlines() if x.strip()]

    async def config(self) -> dict[str, str]:
        if self._config is None:
            text = await self.run(["scontrol", "show", "config"], what="scontrol show config")
            self._config = {
                k.strip(): v.strip()
                for k, sep, v in (line.partition("=") for line in text.splitlines())
                if sep
            }
        return self._config

    async def home(self) -> str:
        """The login user's home on the cluster (where caliban's folder goes by default)."""
        return (await self.run(["sh", "-c", 'printf %s "$HOME"'], what="reading $HOME")).strip()

    # -- submitting ---------------------------------------------------------------------

    async def test_only(self, script: str) -> None:
        """``sbatch --test-only``: slurmctld checks the request, nothing is queued."""
        result = await self.run_raw(["sbatch", "--test-only"], input=script.encode())
        if result.returncode != 0:
            raise await self._refused(["sbatch"], result)

    async def write(self, path: str, text: str) -> None:
        """Write a file on the cluster's filesystem (its folder made first)."""
        folder = path.rsplit("/", 1)[0] or "/"
        script = 'mkdir -p "$1" "$1/logs" && cat >"$2.tmp" && mv "$2.tmp" "$2"'
        await self.run(
            ["sh", "-c", script, "sh", folder, path],
            input=text.encode(),
            what=f"writing {path}",
        )

    async def sbatch(self, script_path: str, workdir: str) -> str:
        result = await self.run_raw(["sbatch", "--parsable", f"--chdir={workdir}", script_path])
        if result.returncode != 0:
            raise await self._refused(["sbatch"], result)
        try:
            return spec.parse_sbatch(result.stdout.decode(errors="replace"))
        except ValueError as exc:
            raise BackendError(f"sbatch {self.where}: {exc}") from None

    async def _refused(
        self, command: Sequence[str], result: subprocess.CompletedProcess[bytes]
    ) -> Exception:
        err = (result.stderr or b"").decode(errors="replace")
        if _BAD_PARTITION.search(err):
            have = ", ".join(sorted(await self.partitions())) or "none"
            m = _BAD_PARTITION.search(err)
            which = f" {m.group(1)!r}" if m and m.group(1) else ""
            return ValidationError(f"unknown partition{which}; this cluster has: {have}")
        if _BAD_QOS.search(err):
            qos = await self.qos_names()
            have = ", ".join(sorted(qos)) if qos else "none (no accounting)"
            return ValidationError(f"the cluster refuses the QOS; it has: {have}")
        if _BAD_ACCOUNT.search(err):
            return ValidationError(f"the cluster refuses the account: {err.strip()}")
        if _BAD_TIME.search(err):
            return ValidationError(f"the cluster refuses the time limit: {err.strip()}")
        if _NOT_AVAILABLE.search(err):
            return ValidationError(
                "no node of the partition has what each task asks for (CPUs, memory, GPUs): "
                + err.strip().splitlines()[-1]
            )
        return self.failure(command, result, "sbatch")

    # -- following jobs -----------------------------------------------------------------

    async def squeue(self) -> list[states.Seen]:
        text = await self.run(["squeue", "--json"], what="squeue")
        try:
            return list(states.parse_squeue_json(text))
        except ValueError as exc:
            raise BackendError(f"squeue {self.where}: {exc}") from None

    async def finished(self, ids: Sequence[str] = ()) -> list[states.Seen]:
        """Jobs slurmctld has forgotten: from the jobcomp file (no slurmdbd needed),
        else from ``sacct`` for ``ids``. Empty when the cluster keeps neither."""
        conf = await self.config()
        if conf.get("JobCompType") == "jobcomp/filetxt" and conf.get("JobCompLoc"):
            result = await self.run_raw(["cat", conf["JobCompLoc"]])
            if result.returncode == 0:
                return list(states.parse_records(result.stdout.decode(errors="replace")))
        if not ids or conf.get("AccountingStorageType", "") in ("", "accounting_storage/none"):
            return []
        result = await self.run_raw(
            [
                "sacct",
                "-n",
                "-P",
                "-X",
                "--format=JobID,JobName,State,ExitCode",
                "-j",
                ",".join(ids),
            ]
        )
        if result.returncode != 0:
            return []
        return list(states.parse_sacct(result.stdout.decode(errors="replace")))

    async def scancel(self, ids: Sequence[str]) -> None:
        if ids:
            await self.run(["scancel", *ids], what="scancel")

    async def read(self, path: str, offset: int = 0) -> bytes | None:
        """The bytes of ``path`` from ``offset`` on; None while it does not exist.

        A missing file is told apart from a failed read (ssh down, no
        permission) by its own exit status, so neither passes for empty output."""
        script = f'test -f "$1" || exit {_NO_FILE}; exec tail -c "+$2" "$1"'
        result = await self.run_raw(["sh", "-c", script, "sh", path, str(offset + 1)])
        if result.returncode == _NO_FILE:
            return None
        if result.returncode != 0:
            raise self.failure(["tail"], result, f"reading {path}")
        return result.stdout
