"""The token cache of the credentials caliban fetches itself."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from caliban.adapters.cloud.credentials_refresh import EARLY, Issued, Refreshing, parse_rfc3339
from caliban.errors import AuthError


async def test_one_fetch_for_many_waiters_and_a_new_one_near_expiry() -> None:
    fetched: list[Issued] = []
    lifetime = [3600.0]

    async def fetch() -> Issued:
        await anyio.lowlevel.checkpoint()
        issued = Issued(f"token-{len(fetched)}", time.time() + lifetime[0])
        fetched.append(issued)
        return issued

    tokens = Refreshing(fetch)
    got: list[str] = []

    async def get() -> None:
        got.append(await tokens.get())

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(get)
    assert got == ["token-0"] * 10 and len(fetched) == 1
    # As if most of the hour had passed: within the early-refresh margin, a new one.
    tokens._issued = Issued("token-0", time.time() + EARLY / 2)
    lifetime[0] = EARLY / 2
    assert await tokens.get() == "token-1"
    assert await tokens.get() == "token-2"  # still too close to its expiry to be reused


async def test_transient_failures_are_retried_and_refusals_are_not() -> None:
    calls = []

    async def flaky() -> Issued:
        calls.append(1)
        if len(calls) < 3:
            raise AuthError("token server down", retryable=True)
        return Issued("ok", time.time() + 3600)

    assert await Refreshing(flaky).get() == "ok" and len(calls) == 3
    calls.clear()

    async def refused() -> Issued:
        calls.append(1)
        raise AuthError("refused", status=400)

    with pytest.raises(AuthError, match="refused"):
        await Refreshing(refused).get()
    assert len(calls) == 1


def test_rfc3339_expiry_times() -> None:
    assert parse_rfc3339("2026-12-02T01:00:00Z") == 1796173200.0
    assert parse_rfc3339("2026-12-02T01:00:00.123456789Z") == 1796173200.0
    assert parse_rfc3339("2026-12-02T02:00:00+01:00") == 1796173200.0
    assert parse_rfc3339("tomorrow") is None
