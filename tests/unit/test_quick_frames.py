"""The Engine API's log frames, taken apart however the bytes arrive."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import pytest

from caliban.platforms.local.quick import _decoded, demultiplex


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


WIRE = (
    frame(1, b"one: caf\xc3")
    + frame(2, b"\xa9\n")
    + frame(1, b"")  # an empty frame carries nothing
    + frame(1, b"x" * 70000)
    + frame(2, b"end")
)


@pytest.mark.parametrize("size", [1, 3, 7, 8, 9, 4096, len(WIRE)])
async def test_payloads_come_out_whole_and_in_order(size: int) -> None:
    got = [p async for p in demultiplex(pieces(WIRE, size))]
    assert got == [b"one: caf\xc3", b"\xa9\n", b"x" * 70000, b"end"]


async def test_a_character_split_across_frames_is_decoded_whole() -> None:
    text = "".join([t async for t in _decoded(demultiplex(pieces(WIRE, 5)))])
    assert text == "one: café\n" + "x" * 70000 + "end"


async def test_a_frame_cut_short_is_dropped_and_bad_bytes_too() -> None:
    wire = frame(1, b"ok\xff\n") + frame(1, b"cut")[:-1]
    text = "".join([t async for t in _decoded(demultiplex(pieces(wire, 2)))])
    assert text == "ok\n"
