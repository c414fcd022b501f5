"""Rate limiting, retries and the GPU pool, on anyio with real (short) time."""

from __future__ import annotations

import itertools

import anyio
import anyio.lowlevel
import pytest

from caliban.core.topology import GpuAffinity
from caliban.errors import BackendError, QuotaError
from caliban.limits import (
    GpuPool,
    ResourcePool,
    RetryPolicy,
    TokenBucket,
    retry_delay,
    with_retries,
)


class FakeClock:
    """Virtual time: the bucket's sleeps advance it instantly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


async def test_bucket_paces_to_the_rate_after_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=50, burst=5, clock=clock, sleep=clock.sleep)
    granted = []
    for _ in range(15):
        await bucket.acquire()
        granted.append(clock.now)
    # 5 free at once, then one every 1/50 s.
    assert granted[:5] == [0.0] * 5
    gaps = [b - a for a, b in itertools.pairwise(granted[4:])]
    assert gaps == pytest.approx([0.02] * 10)


async def test_bucket_pause_holds_every_caller() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000, burst=1, clock=clock, sleep=clock.sleep)
    await bucket.acquire()
    bucket.pause(0.3)
    await bucket.acquire()
    assert clock.now >= 0.3


async def test_bucket_serves_callers_in_arrival_order_past_free_tokens() -> None:
    """A token freed while others wait goes to the first in line, not to a newcomer
    that finds the bucket refilled."""
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=clock.sleep)
    granted: list[int] = []

    async def take(n: int) -> None:
        await bucket.acquire()
        granted.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(take, n)
            await anyio.lowlevel.checkpoint()
        clock.now += 10  # a full bucket for a late caller, while two still wait
        tg.start_soon(take, 4)
    assert granted == [0, 1, 2, 3, 4]


def test_bucket_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


async def test_retries_honour_retry_after_then_succeed() -> None:
    calls: list[float] = []
    retries: list[tuple[int, float]] = []

    async def flaky() -> str:
        calls.append(anyio.current_time())
        if len(calls) < 3:
            raise QuotaError("slow down", retryable=True, retry_after=0.2)
        return "ok"

    result = await with_retries(
        flaky,
        RetryPolicy(attempts=5, initial=0.01),
        on_retry=lambda n, delay, exc: retries.append((n, delay)),
    )
    assert result == "ok" and len(calls) == 3
    assert [n for n, _ in retries] == [1, 2] and all(d == 0.2 for _, d in retries)
    assert calls[1] - calls[0] >= 0.19


async def test_retries_stop_on_permanent_errors_and_after_the_cap() -> None:
    attempts = itertools.count(1)

    async def denied() -> None:
        next(attempts)
        raise BackendError("forbidden", retryable=False, status=403)

    with pytest.raises(BackendError, match="forbidden"):
        await with_retries(denied, RetryPolicy(attempts=5, initial=0.001))
    assert next(attempts) == 2  # called once

    tries = itertools.count(1)

    async def down() -> None:
        next(tries)
        raise BackendError("unavailable", retryable=True, status=503)

    with pytest.raises(BackendError, match="unavailable"):
        await with_retries(down, RetryPolicy(attempts=3, initial=0.001, max_delay=0.002))
    assert next(tries) == 4  # exactly 3 attempts


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryPolicy(initial=1, max_delay=8)
    delays = [policy.backoff(n) for n in range(1, 10) for _ in range(20)]
    assert all(0 <= d <= 8 for d in delays)
    assert len(set(delays)) > 100


def test_retry_delay_retries_only_retryable_backend_errors() -> None:
    policy = RetryPolicy()
    for error in (
        BackendError("forbidden", retryable=False, status=403),
        ValueError("a bug"),
        TimeoutError(),
    ):
        assert retry_delay(1, error, policy, elapsed=0, jitter=0.5) is None
    assert retry_delay(1, BackendError("down", retryable=True), policy, elapsed=0) is not None


def test_retry_delay_caps_attempts_and_gives_429s_more() -> None:
    policy = RetryPolicy(attempts=3, quota_attempts=5, initial=0.1)
    down = BackendError("unavailable", retryable=True, status=503)
    assert [retry_delay(n, down, policy, elapsed=0, jitter=1) is None for n in (1, 2, 3)] == [
        False,
        False,
        True,
    ]
    busy = QuotaError("slow down", retryable=True)
    assert [retry_delay(n, busy, policy, elapsed=0, jitter=1) is None for n in range(1, 6)] == [
        False,
        False,
        False,
        False,
        True,
    ]


def test_retry_delay_stops_at_the_deadline() -> None:
    policy = RetryPolicy(attempts=10, deadline=30)
    down = BackendError("unavailable", retryable=True)
    assert retry_delay(2, down, policy, elapsed=29.9, jitter=0) == 0
    assert retry_delay(2, down, policy, elapsed=30, jitter=0) is None
    # A server that names a wait does not buy time past the deadline either.
    late = QuotaError("slow down", retryable=True, retry_after=1)
    assert retry_delay(2, late, policy, elapsed=31) is None


def test_retry_delay_backs_off_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(attempts=10, initial=1, max_delay=8)
    down = BackendError("unavailable", retryable=True)
    tops = [retry_delay(n, down, policy, elapsed=0, jitter=1) for n in range(1, 7)]
    assert tops == [1, 2, 4, 8, 8, 8]
    assert retry_delay(3, down, policy, elapsed=0, jitter=0.25) == 1
    assert retry_delay(3, down, policy, elapsed=0, jitter=0) == 0
    drawn = [retry_delay(3, down, policy, elapsed=0) for _ in range(200)]
    assert all(d is not None and 0 <= d <= 4 for d in drawn) and len(set(drawn)) > 100


def test_retry_delay_takes_the_servers_retry_after_capped() -> None:
    policy = RetryPolicy(max_delay=2)
    told = BackendError("unavailable", retryable=True, retry_after=3.5)
    assert retry_delay(1, told, policy, elapsed=0, jitter=0) == 3.5
    assert retry_delay(1, told, policy, elapsed=0, jitter=1) == 3.5
    far = QuotaError("slow down", retryable=True, retry_after=600)
    assert retry_delay(1, far, policy, elapsed=0) == 10  # 5 x max_delay
    now = QuotaError("slow down", retryable=True, retry_after=0)
    assert retry_delay(1, now, policy, elapsed=0, jitter=1) == 0


async def test_retries_give_429s_their_own_cap_and_pass_other_errors_through() -> None:
    answers: list[BaseException] = [QuotaError("slow down", retryable=True, retry_after=0)] * 4

    async def busy() -> str:
        if answers:
            raise answers.pop()
        return "ok"

    # Four 429s in a row, more than ``attempts`` allows for other errors.
    assert await with_retries(busy, RetryPolicy(attempts=2, quota_attempts=5)) == "ok"

    calls = itertools.count(1)

    async def broken() -> None:
        next(calls)
        raise KeyError("a bug, not a platform answer")

    with pytest.raises(KeyError):
        await with_retries(broken, RetryPolicy(attempts=5, initial=0.001))
    assert next(calls) == 2  # called once


async def test_retries_stop_at_the_deadline() -> None:
    started = anyio.current_time()
    tries = itertools.count(1)

    async def down() -> None:
        next(tries)
        raise BackendError("unavailable", retryable=True, retry_after=0.03)

    with pytest.raises(BackendError, match="unavailable"):
        await with_retries(down, RetryPolicy(attempts=100, deadline=0.1))
    # 0, 0.03, 0.06, 0.09 (+ scheduling): the try after 0.1 s is the last.
    assert 3 <= next(tries) - 1 <= 6
    assert anyio.current_time() - started < 0.5


async def test_gpu_pool_never_hands_out_an_id_twice() -> None:
    pool = GpuPool(["0", "1", "2", "3"])
    held: set[str] = set()
    peak = 0

    async def job(k: int) -> None:
        nonlocal peak
        async with pool.acquire(k) as ids:
            assert len(ids) == k and not held & set(ids)
            held.update(ids)
            peak = max(peak, len(held))
            await anyio.sleep(0.01)
            held.difference_update(ids)

    async with anyio.create_task_group() as tg:
        for k in [1, 2, 3, 1, 4, 2, 1, 1, 3, 2] * 3:
            tg.start_soon(job, k)
    assert peak == 4 and pool.free == frozenset({"0", "1", "2", "3"})


async def test_gpu_pool_serves_requests_in_order() -> None:
    """A 4-GPU job queued behind 1-GPU jobs is not starved by later 1-GPU jobs."""
    pool = GpuPool(["0", "1", "2", "3"])
    order: list[str] = []

    async def job(name: str, k: int, hold: float) -> None:
        async with pool.acquire(k):
            order.append(name)
            await anyio.sleep(hold)

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, "small-1", 1, 0.05)
        await anyio.sleep(0.01)
        tg.start_soon(job, "big", 4, 0.01)
        await anyio.sleep(0.01)
        tg.start_soon(job, "small-2", 1, 0.01)
    assert order == ["small-1", "big", "small-2"]


async def test_gpu_pool_releases_on_cancellation() -> None:
    pool = GpuPool(["0", "1"])
    with anyio.move_on_after(0.05):
        async with pool.acquire(2):
            await anyio.sleep(10)
    assert pool.free == frozenset({"0", "1"})
    with anyio.move_on_after(0.05):
        async with pool.acquire(2), pool.acquire(1):  # the second waits: cancelled queued
            pass
    async with pool.acquire(2) as ids:
        assert ids == ("0", "1")


def test_gpu_pool_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError):
        GpuPool(["0", "0"])


def _sockets() -> dict[str, GpuAffinity]:
    low = GpuAffinity(frozenset(range(32)), 0)
    high = GpuAffinity(frozenset(range(32, 64)), 1)
    return {str(i): (low if i < 4 else high) for i in range(8)}


async def test_resource_pool_never_shares_a_gpu_or_core_at_scale() -> None:
    """8 GPUs, 64 cores: 120 jobs of mixed sizes, every holding checked against the others."""
    pool = ResourcePool([str(i) for i in range(8)], range(64), _sockets())
    gpus_held: set[str] = set()
    cores_held: set[int] = set()
    peak = local = 0

    async def job(g: int, c: int) -> None:
        nonlocal peak, local
        async with pool.hold(g, c) as got:
            assert len(got.gpus) == g and len(got.cpus) == c
            assert not gpus_held & set(got.gpus) and not cores_held & set(got.cpus)
            gpus_held.update(got.gpus)
            cores_held.update(got.cpus)
            peak = max(peak, len(gpus_held))
            local += got.numa is not None
            await anyio.sleep(0.001 * (g + c % 3))
            gpus_held.difference_update(got.gpus)
            cores_held.difference_update(got.cpus)

    async with anyio.create_task_group() as tg:
        for g, c in [(1, 8), (2, 16), (1, 4), (4, 32), (1, 1), (2, 8)] * 20:
            tg.start_soon(job, g, c)
    assert peak > 1 and local > 0
    assert pool.free == frozenset(pool.ids) and pool.free_cores == frozenset(range(64))


async def test_resource_pool_takes_gpus_and_cores_together() -> None:
    """A job whose cores are busy holds no GPU meanwhile, and the queue stays in order."""
    pool = ResourcePool(["0", "1"], [0, 1])
    order: list[str] = []
    waiting = anyio.Event()

    async def job(name: str, g: int, c: int, hold: anyio.Event | None = None) -> None:
        async with pool.hold(g, c) as got:
            order.append(f"{name}:{','.join(got.gpus)}:{','.join(map(str, got.cpus))}")
            if hold is not None:
                await hold.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, "first", 1, 2, waiting)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(job, "second", 1, 1)  # a GPU is free, its core is not
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(job, "cpu-only", 0, 1)  # queued behind "second", not past it
        await anyio.wait_all_tasks_blocked()
        assert pool.free == frozenset({"1"}) and pool.free_cores == frozenset()
        assert order == ["first:0:0,1"]
        waiting.set()
    assert order == ["first:0:0,1", "second:0:0", "cpu-only::1"]


async def test_resource_pool_releases_cores_on_cancellation() -> None:
    pool = ResourcePool([], [0, 1, 2])
    with anyio.move_on_after(0.05):
        async with pool.hold(0, 3), pool.hold(0, 1):  # the second waits: cancelled queued
            pass
    assert pool.free_cores == frozenset({0, 1, 2})
    async with pool.hold(0, 2) as got:
        assert got.cpus == (0, 1) and got.gpus == ()
    with pytest.raises(ValueError):
        async with pool.hold(0, 4):
            pass
    with pytest.raises(ValueError):
        ResourcePool([], [1, 1])
