"""A local job's output on the real engine: the log is a byte copy, the terminal a safe view."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from caliban import events as ev
from caliban.options import ProjectOptions, RunRequest
from caliban.session import Session
from caliban.spec import JobState
from tests.conftest import MakeProject

if sys.version_info < (3, 11):
    pass

pytestmark = [pytest.mark.docker]

# Everything a log must keep as it is: all byte values, invalid UTF-8, NULs,
# carriage returns, terminal escapes, a 1 MB line, and no newline at the end.
AWKWARD = (
    bytes(range(256))
    + b"\n\xff\xfe\xc3(invalid utf-8\x00nul\x00\n"
    + b"progress 10%\rprogress 50%\rprogress 100%\r\n"
    + b"\x1b]0;pwned title\x07\x1b[2J\x1b[31mred\x1b[0m\x07\n"
    + b"M" * (1 << 20)
    + b"\nthe end, no newline"
)
MARKER = b"=== written to stderr after stdout ===\n"

BYTES_JOB = textwrap.dedent(
    """
    import sys
    data = open("payload.bin", "rb").read()
    out = sys.stdout.buffer
    for i in range(0, len(data), 4096):
        out.write(data[i : i + 4096])
    out.flush()
    sys.stderr.buffer.write(MARKER)
    sys.stderr.flush()
    """
).replace("MARKER", repr(MARKER))

SEEDED_JOB = textwrap.dedent(
    """
    import random, sys
    rng = random.Random(1234)
    out = sys.stdout.buffer
    for _ in range(SIZE // 65536):
        out.write(rng.randbytes(65536))
    """
)


def _payload_project(make_project: MakeProject, payload: bytes, job: str) -> Path:
    folder = make_project({"job.py": job})
    (folder / "payload.bin").write_bytes(payload)
    return folder


async def _run_one(session: Session, folder: Path, xgroup: str) -> tuple[Path, list[ev.Event]]:
    seen: list[ev.Event] = []
    session.sink = seen.append
    result = await session.run(
        RunRequest(project=ProjectOptions(folder=folder, entry="job.py"), xgroup=xgroup)
    )
    (job,) = result.jobs
    assert job.state is JobState.SUCCEEDED, job.message
    assert job.log_path is not None
    return Path(job.log_path), seen


async def test_log_keeps_every_byte_and_terminal_gets_only_text(
    session: Session, make_project: MakeProject
) -> None:
    folder = _payload_project(make_project, AWKWARD, BYTES_JOB)
    log, seen = await _run_one(session, folder, "bytes")
    data = log.read_bytes()
    # The engine copies stdout and stderr concurrently: the marker may land
    # anywhere between stdout's chunks, but every byte of both is there once.
    assert data.count(MARKER) == 1 and data.replace(MARKER, b"") == AWKWARD
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700

    shown = [e.line for e in seen if isinstance(e, ev.JobOutput)]
    assert all(not any(c in line for c in "\x1b\x07\x00\r") for line in shown)
    assert "progress 100%" in shown and "red" in shown
    # The 1 MB line is cut for the terminal and the unfinished last line still shows.
    (long,) = [line for line in shown if line.startswith("MMMM")]
    assert len(long) < 70_000 and "more bytes in the log" in long
    assert "the end, no newline" in shown and MARKER.decode().strip() in shown

    # `caliban logs` of the finished job reads the log file, invalid bytes and all.
    text = "".join([chunk async for chunk in session.logs(log.stem)])
    assert text == data.decode("utf-8", "replace")


async def test_megabytes_of_output_reach_the_log_intact(
    session: Session, make_project: MakeProject
) -> None:
    size = 8 << 20
    folder = make_project({"job.py": SEEDED_JOB.replace("SIZE", str(size))})
    log, seen = await _run_one(session, folder, "big")
    expected = random.Random(1234)
    digest = hashlib.sha256()
    for _ in range(size // 65536):
        digest.update(expected.randbytes(65536))
    assert os.path.getsize(log) == size
    assert hashlib.sha256(log.read_bytes()).hexdigest() == digest.hexdigest()
    # Random bytes hold tens of thousands of newlines; the terminal got a view of them.
    shown = sum(isinstance(e, ev.JobOutput) for e in seen)
    skipped = sum(e.count for e in seen if isinstance(e, ev.JobOutputSkipped))
    assert skipped > 0 and shown < 1000
    assert all(str(log) == e.log_path for e in seen if isinstance(e, ev.JobOutputSkipped))


async def test_a_container_that_cannot_start_fails_its_job_with_the_engine_reason(
    session: Session, make_project: MakeProject
) -> None:
    # Created fine, refused by the engine at start: the output pump starts it,
    # and its error must reach the job's handler as one BackendError, which
    # fails that job (not the sweep) with the engine's reason.
    folder = make_project()
    request = RunRequest(
        project=ProjectOptions(folder=folder, entry="job.py"),
        xgroup="nostart",
        docker_run_args=("--device", "/dev/caliban-no-such-device"),
    )
    result = await session.run(request)
    assert not result.ok
    (job,) = await (await session.store()).jobs(xgroup="nostart")
    assert job.state is JobState.FAILED
    assert job.message is not None and "no-such-device" in job.message
    assert "cannot start a container" in job.message
