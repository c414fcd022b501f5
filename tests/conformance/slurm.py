"""The conformance case of the Slurm platform, on the real one-node cluster of
scripts/slurm-cluster.sh (slurmctld + slurmd; the tasks run ``docker run``).

Each task runs ``gate.py`` (the local case's), which waits for its verdict (an
exit code) in a folder bind-mounted into its container: :meth:`finish` writes
it and waits until slurmctld says the task ended.

What reached the cluster is seen by two stand-ins put first on the session's
PATH, each running the real command: ``sbatch`` notes every array it submitted
(its id and its batch script, whose argument file beside it names the caliban
job of each task), and can lose its answer once (the array is made, caliban is
told the controller timed out, as a dropped connection would); ``squeue`` counts
the list calls a refresh makes. A lost answer is per submission: one sbatch
sends every job of a sweep, so losing the answer for job ``i`` loses it for
the whole array that carries job ``i``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from caliban.options import ProjectOptions, SlurmRequest
from caliban.platforms.slurm import spec, states
from caliban.session import Session
from caliban.spec import JobRecord, JobState
from caliban.spec import Platform as Kind
from tests.conformance.local import GATE_PY

# What the real squeue says of a task that has ended (it keeps it MinJobAge seconds).
_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def _real(command: str) -> str:
    found = shutil.which(command)
    assert found is not None, f"no {command} on PATH: is the Slurm cluster installed?"
    return found


def _stand_ins(folder: Path) -> Path:
    """``sbatch`` and ``squeue`` that note what they were asked, then run the real ones."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --test-only "*) exec "{_real("sbatch")}" "$@" ;; esac\n'
        f'out="$("{_real("sbatch")}" "$@")" || exit $?\n'
        "for script; do :; done\n"  # the last argument: the batch script
        f'echo "$out $script" >>"{folder}/submitted"\n'
        f'if [ -e "{folder}/lose" ]; then\n'
        f'  rm -f "{folder}/lose"; echo "$out" >>"{folder}/lost"\n'
        '  echo "sbatch: error: Socket timed out on send/recv operation" >&2; exit 1\n'
        "fi\n"
        'echo "$out"\n'
    )
    squeue = bin_dir / "squeue"
    squeue.write_text(f'#!/bin/sh\necho >>"{folder}/squeue-calls"\nexec "{_real("squeue")}" "$@"\n')
    for tool in (sbatch, squeue):
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _submitted(folder: Path) -> list[tuple[str, list[str]]]:
    """Each array sbatch made: its id and the caliban job id of each task."""
    out = []
    for line in _lines(folder / "submitted"):
        array_id, script = line.split(" ", 1)
        args = Path(script).parent / spec.ARGS
        jobs = [spec.parse_args_line(x).job_id for x in _lines(args)]
        out.append((spec.parse_sbatch(array_id), jobs))
    return out


def _squeue() -> dict[str, str]:
    """Every task the controller knows, by ``ARRAY_TASK`` id: its state."""
    done = subprocess.run(
        [_real("squeue"), "--json"], capture_output=True, text=True, timeout=60, check=True
    )
    return {s.key: s.status.slurm_state for s in states.parse_squeue_json(done.stdout)}


@asynccontextmanager
async def slurm_case(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    from tests.conformance.conftest import PlatformCase

    env: dict[str, str] = request.getfixturevalue("env")  # skips (fails in CI) without Docker
    request.getfixturevalue("slurm_cluster")  # fails in CI without the cluster
    home: Path = request.getfixturevalue("home")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    seen = tmp_path / "slurm-seen"
    seen.mkdir()
    verdicts = tmp_path / "verdicts"
    verdicts.mkdir(mode=0o755)
    environ = {**env, "PATH": f"{_stand_ins(seen)}{os.pathsep}{env.get('PATH', '')}"}

    @asynccontextmanager
    async def session() -> AsyncIterator[Session]:
        async with Session(home=home, environ=environ) as s:
            yield s

    def sweep(project: ProjectOptions, experiments: object, xgroup: str) -> object:
        (project.folder / "gate.py").write_text(GATE_PY)
        return SlurmRequest(
            project=ProjectOptions(folder=project.folder, entry="gate.py", use_gpu=False),
            experiments=experiments,
            xgroup=xgroup,
            docker_run_args=("-v", f"{verdicts}:/verdicts"),
        )

    async def finish(job: JobRecord, state: JobState) -> None:
        assert job.platform_id, f"job {job.short_id} was never accepted by sbatch"
        verdict = verdicts / job.job_id
        verdict.with_suffix(".tmp").write_text("0" if state is JobState.SUCCEEDED else "3")
        verdict.with_suffix(".tmp").rename(verdict)
        # Polling on purpose: slurmctld tells nobody when a task ends.
        with anyio.fail_after(180):
            while (await anyio.to_thread.run_sync(_squeue)).get(job.platform_id) not in _ENDED:  # noqa: ASYNC110
                await anyio.sleep(0.3)

    def lose_answer(index: int) -> None:
        (seen / "lose").touch()

    def creates() -> Counter[str]:
        return Counter(job for _, jobs in _submitted(seen) for job in jobs)

    def made() -> Counter[str]:
        known = _squeue()
        return Counter(
            job
            for array_id, jobs in _submitted(seen)
            for i, job in enumerate(jobs)
            if spec.platform_id(array_id, i) in known
        )

    try:
        yield PlatformCase(
            kind=Kind.SLURM,
            session=session,
            request=sweep,
            # One cluster: one squeue answers for every task of every array.
            targets=1,
            finish=finish,
            lose_answer=lose_answer,
            refuse_once=lambda index: None,  # never asked: not in RETRYING_CREATES
            lost=lambda: len(_lines(seen / "lost")),
            creates=creates,
            made=made,
            lists=lambda: Counter({"cluster": len(_lines(seen / "squeue-calls"))}),
        )
    finally:
        arrays = sorted({array_id for array_id, _ in _submitted(seen)})
        if arrays:
            await anyio.run_process([_real("scancel"), *arrays], check=False)
