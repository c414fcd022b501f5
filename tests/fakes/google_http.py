"""Shared plumbing for the fake servers: running an app on 127.0.0.1 and Google's error shapes.

Every fake owns one ``web.AppRunner`` bound to an ephemeral port, so many fakes (and many tests
in parallel processes) never collide, and the production client only needs a different base URL.
"""

from __future__ import annotations

import socket
import struct
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

if TYPE_CHECKING:
    from typing_extensions import Self

# google.rpc.Code names -> (HTTP status, numeric code), after AIP-193 / google/rpc/code.proto.
RPC_CODES: dict[str, tuple[int, int]] = {
    "OK": (200, 0),
    "CANCELLED": (499, 1),
    "UNKNOWN": (500, 2),
    "INVALID_ARGUMENT": (400, 3),
    "DEADLINE_EXCEEDED": (504, 4),
    "NOT_FOUND": (404, 5),
    "ALREADY_EXISTS": (409, 6),
    "PERMISSION_DENIED": (403, 7),
    "RESOURCE_EXHAUSTED": (429, 8),
    "FAILED_PRECONDITION": (400, 9),
    "ABORTED": (409, 10),
    "OUT_OF_RANGE": (400, 11),
    "UNIMPLEMENTED": (501, 12),
    "INTERNAL": (500, 13),
    "UNAVAILABLE": (503, 14),
    "DATA_LOSS": (500, 15),
    "UNAUTHENTICATED": (401, 16),
}

# When a test only says "answer 503", this is the status name Google pairs with that HTTP code.
STATUS_FOR_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

DisconnectStyle = Literal["close", "reset"]


def rpc_error(
    status: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A google.rpc.Status error response exactly as Google's HTTP front end renders it."""
    # The JSON envelope carries the HTTP status in "code" (not the rpc number) plus the name.
    http = http_status if http_status is not None else RPC_CODES[status][0]
    error: dict[str, Any] = {"code": http, "message": message, "status": status}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=http, headers=headers)


def error_info(
    reason: str, metadata: dict[str, str], *, domain: str = "googleapis.com"
) -> dict[str, Any]:
    """A google.rpc.ErrorInfo detail (the machine-readable reason of an error)."""
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": domain,
        "metadata": metadata,
    }


def error_for_http(http_status: int, message: str) -> web.Response:
    """A google.rpc.Status response for a bare HTTP code (used by "fail the next N" knobs)."""
    return rpc_error(STATUS_FOR_HTTP.get(http_status, "UNKNOWN"), message, http_status=http_status)


def drop_connection(request: web.Request, style: DisconnectStyle) -> None:
    """Tear down the TCP connection under ``request`` without sending a byte of response.

    "close" sends FIN: aiohttp's client raises ServerDisconnectedError. "reset" sets SO_LINGER 0
    before closing so the kernel sends RST: the client raises ClientOSError(ECONNRESET). The
    handler may still return a response afterwards; aiohttp silently discards it.
    """
    transport = request.transport
    if transport is None:  # already gone
        return
    if style == "reset":
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


def format_duration(seconds: float) -> str:
    """proto3 JSON Duration: "30s", or "1.500s" when there is a fractional part."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}s"


class FakeServer:
    """Base class: runs ``build_app()`` on 127.0.0.1 with a free port.

    Use ``async with Sub(...) as srv`` or ``await srv.start()`` / ``await srv.close()``;
    ``srv.url`` is ``http://127.0.0.1:PORT`` while running.
    """

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def build_app(self) -> web.Application:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        if self._runner is None:
            raise RuntimeError(f"{type(self).__name__} is not running: call start() first")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Self:
        """Bind to an ephemeral port and start serving."""
        if self._runner is not None:
            return self
        # access_log=None: tests assert on counters, not on log lines, and logs are noise here.
        # A short shutdown_timeout: aiohttp otherwise waits up to 60 s at close() for handlers
        # still sleeping in a latency knob, after their client has long given up.
        runner = web.AppRunner(
            self.build_app(), handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        self._runner = runner
        return self

    async def close(self) -> None:
        """Stop serving; handlers still sleeping (latency knobs) are cancelled."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
