"""The stdlib engine client's HTTP, against a Unix-socket server written here.

The real engine answers JSON with a length and logs chunked (the integration
tests talk to it); this server also answers up to the end of the connection,
with errors, and cut short, so every way of reading a body is exercised.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from caliban.adapters import enginequick
from caliban.adapters.enginequick import EngineError, target
from caliban.errors import BackendError, EngineUnavailable
from caliban.platforms.local.quick import QuickContainer

Answer = Callable[[bytes], bytes]


@asynccontextmanager
async def server(tmp_path: Path, answer: Answer) -> AsyncIterator[tuple[str, list[bytes]]]:
    path = str(tmp_path / "engine.sock")
    heads: list[bytes] = []
    listener = await anyio.create_unix_listener(path)

    async def serve(conn: SocketStream) -> None:
        async with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await conn.receive()
            heads.append(data)
            await conn.send(answer(data))

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield path, heads
        tg.cancel_scope.cancel()


def http(status: str, body: bytes, *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "answer",
    [
        http("200 OK", b'{"Id": "abc"}', "Content-Length: 13"),
        http("200 OK", chunked(b'{"Id"', b': "abc"}'), "Transfer-Encoding: chunked"),
        http("200 OK", b'{"Id": "abc"}'),  # up to the end of the connection
    ],
    ids=["sized", "chunked", "to-eof"],
)
async def test_a_json_answer_however_its_body_is_framed(tmp_path: Path, answer: bytes) -> None:
    async with server(tmp_path, lambda _: answer) as (path, heads):
        got = await enginequick.call(path, "GET", target("/containers/x/json"))
    assert got == {"Id": "abc"}
    assert heads[0].startswith(b"GET /containers/x/json HTTP/1.1\r\n")
    assert b"Connection: close" in heads[0]


async def test_a_body_is_sent_as_json_and_no_body_is_none(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def answer(head: bytes) -> bytes:
        seen.append(head)
        return http("204 No Content", b"")

    async with server(tmp_path, answer) as (path, _):
        assert await enginequick.call(path, "POST", "/x", {"a": 1}) is None
    assert b"Content-Type: application/json" in seen[0] and b"Content-Length: 8" in seen[0]


async def test_errors_carry_the_status_and_the_engines_message(tmp_path: Path) -> None:
    missing = http("404 Not Found", b'{"message":"No such container: x"}', "Content-Length: 34")
    async with server(tmp_path, lambda _: missing) as (path, _):
        with pytest.raises(EngineError) as caught:
            await enginequick.call(path, "GET", "/containers/x/json")
    assert (caught.value.status, caught.value.message) == (404, "No such container: x")

    plain = http("500 Internal Server Error", b"page not found\n")
    async with server(tmp_path, lambda _: plain) as (path, _):
        with pytest.raises(EngineError) as caught:
            await enginequick.call(path, "GET", "/x")
    assert (caught.value.status, caught.value.message) == (500, "page not found")


async def test_an_answer_cut_short(tmp_path: Path) -> None:
    cut = http("200 OK", b'{"Id": ', "Content-Length: 13")
    async with server(tmp_path, lambda _: cut) as (path, _):
        with pytest.raises(EngineUnavailable, match="cut off"):
            await enginequick.call(path, "GET", "/x")
        # A stream (a followed log) just ends there, as aiodocker's does.
        async with enginequick.stream(path, "GET", "/x") as body:
            assert [p async for p in body] == [b'{"Id": ']


async def test_a_streamed_answer_arrives_piece_by_piece(tmp_path: Path) -> None:
    answer = http("200 OK", chunked(b"one", b"two"), "Transfer-Encoding: chunked")
    async with (
        server(tmp_path, lambda _: answer) as (path, _),
        enginequick.stream(path, "GET", "/logs") as body,
    ):
        assert [p async for p in body] == [b"one", b"two"]


UPGRADED = http(
    "101 UPGRADED",
    b"",
    "Content-Type: application/vnd.docker.raw-stream",
    "Connection: Upgrade",
    "Upgrade: tcp",
)


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


async def test_an_attach_takes_the_connection_over_and_reads_it_to_its_end(
    tmp_path: Path,
) -> None:
    wire = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"\xff\x00")
    async with (
        server(tmp_path, lambda _: UPGRADED + wire) as (path, heads),
        enginequick.attach(path, "/containers/x/attach?stream=1") as body,
    ):
        got = b"".join([p async for p in body])
    assert got == wire
    assert heads[0].startswith(b"POST /containers/x/attach?stream=1 HTTP/1.1\r\n")
    assert b"Connection: Upgrade\r\n" in heads[0] and b"Upgrade: tcp\r\n" in heads[0]
    assert b"Connection: close" not in heads[0]


async def test_a_quick_attach_gives_aiodockers_stream_numbers_and_bytes(tmp_path: Path) -> None:
    wire = frame(1, b"out: caf\xc3") + frame(2, b"\xa9\n") + frame(1, b"") + frame(1, b"end")
    async with server(tmp_path, lambda _: UPGRADED + wire) as (path, _):
        container = QuickContainer(path, "x", tty=False)
        async with container.attach(stdout=True, stderr=True) as stream:
            got = []
            while (piece := await stream.read_out()) is not None:
                got.append((piece.stream, piece.data))
    assert got == [(1, b"out: caf\xc3"), (2, b"\xa9\n"), (1, b"end")]

    # With a terminal the engine sends the bytes as they are, one stream.
    async with (
        server(tmp_path, lambda _: UPGRADED + b"raw \x01 bytes") as (path, _),
        QuickContainer(path, "x", tty=True).attach(stdout=True) as stream,
    ):
        assert await stream.read_out() == (1, b"raw \x01 bytes")
        assert await stream.read_out() is None


async def test_an_attach_refused_raises_before_anything_is_read(tmp_path: Path) -> None:
    missing = http("404 Not Found", b'{"message":"No such container: x"}', "Content-Length: 34")
    async with server(tmp_path, lambda _: missing) as (path, _):
        with pytest.raises(EngineError) as caught:
            async with enginequick.attach(path, "/containers/x/attach"):
                raise AssertionError("entered")
    assert caught.value.status == 404


async def test_a_ping_says_whether_an_engine_answers(tmp_path: Path) -> None:
    ok = http("200 OK", b"OK", "Content-Length: 2", "Content-Type: text/plain")
    async with server(tmp_path, lambda _: ok) as (path, heads):
        await enginequick.ping(path)
    assert heads[0].startswith(b"GET /_ping HTTP/1.1\r\n")
    broken = http("500 Internal Server Error", b"down\n")
    async with server(tmp_path, lambda _: broken) as (path, _):
        with pytest.raises(EngineUnavailable, match="down"):
            await enginequick.ping(path)
    with pytest.raises(EngineUnavailable, match=r"no\.sock"):
        await enginequick.ping(str(tmp_path / "no.sock"))


async def test_no_engine_on_the_socket(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"no\.sock"):
        await enginequick.call(str(tmp_path / "no.sock"), "GET", "/x")


def test_query_values_are_sent_as_aiodocker_sends_them() -> None:
    where = target("/containers/json", all=True, follow=False, t=10, skip=None)
    assert where == "/containers/json?all=1&follow=0&t=10"
    assert target("/x") == "/x"


async def test_an_inspect_answered_with_text_is_an_error_naming_it(tmp_path: Path) -> None:
    answer = http("500 Internal Server Error", b"engine \xffbroke", "Content-Length: 13")
    async with server(tmp_path, lambda _: answer) as (path, _):
        with pytest.raises(BackendError, match=r"image inspect of img:1: 500 engine .*broke"):
            await enginequick.inspect_image(path, "img:1")


async def test_a_ping_answered_with_an_error_is_an_engine_unavailable(tmp_path: Path) -> None:
    answer = http("500 Internal Server Error", b'{"message": "down"}', "Content-Length: 19")
    async with server(tmp_path, lambda _: answer) as (path, _):
        with pytest.raises(EngineUnavailable, match=r"engine\.sock: down"):
            await enginequick.ping(path)
