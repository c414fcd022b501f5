"""A job's log file: private, appended, and a clear error when it cannot be written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from caliban.errors import BackendError
from caliban.platforms.local import joboutput


def test_log_is_private_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "group" / "job.log"
    for part in (b"first\x00\xff", b"second"):
        with joboutput.open_log(path) as log:
            log.write(part)
    assert path.read_bytes() == b"first\x00\xffsecond"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_an_unwritable_log_is_a_backend_error(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log folder should be")
    with pytest.raises(BackendError, match="cannot write the job's log"):
        await joboutput._open(blocker / "group" / "job.log")


async def test_finished_log_reads_back_as_text_in_bounded_pieces(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    # A character split across two reads must not turn into replacement marks.
    split = b"a" * (joboutput.READ_CHUNK - 1) + "✓".encode()
    data = split + b" ok\n" + b"z" * (3 * joboutput.READ_CHUNK) + b"\xff end"
    path.write_bytes(data)
    pieces = [p async for p in joboutput.read_log(path)]
    assert "".join(pieces) == data.decode("utf-8", "replace")
    assert "".join(pieces).count("\ufffd") == 1
    assert max(len(p) for p in pieces) <= joboutput.READ_CHUNK
