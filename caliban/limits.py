"""Concurrency limits shared by every backend: rate, retries, GPU and CPU slots.

anyio only. Nothing here knows about Docker, Vertex or Kubernetes; backends
raise :class:`~caliban.errors.BackendError` with ``retryable``/``retry_after``
set and these helpers decide what to do.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from caliban.core import topology
from caliban.core.topology import Choice, GpuAffinity
from caliban.errors import BackendError, QuotaError

T = TypeVar("T")
Clock = Callable[[], float]


class TokenBucket:
    """Paces calls to ``rate`` per second with bursts of at most ``burst``.

    One bucket per quota (for Vertex: job creations per project and region).
    Waiters are served in arrival order because anyio's Lock is fair, so a
    sweep submits its jobs in order. :meth:`pause` lets a 429 with Retry-After
    hold back every caller of the same quota, not just the one that was told.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock or anyio.current_time
        # Injectable with the clock so tests can check the pacing on virtual time.
        self._sleep = sleep or anyio.sleep
        self._tokens = self.burst
        self._stamp: float | None = None
        self._paused_until = 0.0
        self._lock = anyio.Lock()

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        # Nobody holds the lock, so nobody waits for it (anyio hands a released Lock
        # straight to its next waiter): a token in the bucket is taken without the
        # lock's round trip through the event loop, hundreds of times in a fast sweep.
        if not self._lock.locked():
            now = self._clock()
            if now >= self._paused_until:
                self._refill(now)
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                self._refill(now)
                # A hair below 1.0 after a refill is rounding, not a missing token: waiting
                # for it would sleep for ~0 s again and again.
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await self._sleep((1.0 - self._tokens) / self.rate)

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` and restart from an empty bucket."""
        now = self._clock()
        self._paused_until = max(self._paused_until, now + seconds)
        self._tokens = 0.0
        self._stamp = self._paused_until


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped in attempts and total time."""

    attempts: int = 6
    initial: float = 1.0
    max_delay: float = 60.0
    deadline: float = 900.0
    # A 429 for a rate quota means "not now", not "broken": it gets more tries
    # (still within the deadline) before a job is given up.
    quota_attempts: int = 24

    def window(self, attempt: int) -> float:
        """The longest wait after ``attempt`` failed: doubling from ``initial``, capped."""
        return min(self.max_delay, self.initial * 2.0 ** (attempt - 1))

    def backoff(self, attempt: int) -> float:
        # Full jitter: spreads a thundering herd of retries over the whole window.
        return random.uniform(0, self.window(attempt))


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and exc.retryable


def retry_delay(
    attempt: int,
    error: BaseException,
    policy: RetryPolicy,
    *,
    elapsed: float,
    jitter: float | None = None,
) -> float | None:
    """How long to wait before trying again after ``attempt`` (1 for the first try)
    failed with ``error``, ``elapsed`` seconds after the first try began; None: give up.

    Only a retryable :class:`BackendError` is tried again, at most ``attempts`` times in
    all (``quota_attempts`` when the last answer was a 429) and never once ``deadline``
    seconds have passed. The wait is the server's Retry-After when it named one (capped
    at five times ``max_delay``), else the policy's full-jitter backoff. ``jitter`` in
    [0, 1] picks the point in the backoff window; by default it is drawn at random.
    Pure when ``jitter`` is given.
    """
    if not is_retryable(error):
        return None
    cap = policy.quota_attempts if isinstance(error, QuotaError) else policy.attempts
    if attempt >= cap or elapsed >= policy.deadline:
        return None
    assert isinstance(error, BackendError)  # is_retryable said so
    if error.retry_after is not None:
        return min(error.retry_after, policy.max_delay * 5)
    if jitter is None:
        return policy.backoff(attempt)
    return jitter * policy.window(attempt)


OnRetry = Callable[[int, float, BaseException], None]


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: OnRetry | None = None,
) -> T:
    """Run ``call`` until it succeeds, fails for good, or the policy gives up
    (see :func:`retry_delay`); the last error is re-raised as is.
    ``on_retry(attempt, delay, error)`` runs before each sleep so the caller can
    report it (and pause a shared bucket).

    A plain loop: a sweep runs one of these per job, and building a retrying
    object per call cost more than the rest of the bookkeeping of a create.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except BackendError as exc:
            delay = retry_delay(attempt, exc, policy, elapsed=time.monotonic() - start)
            if delay is None:
                raise
            error: BackendError = exc
        if on_retry is not None:
            on_retry(attempt, delay, error)
        del error  # not kept alive (with its traceback) across the sleep
        await anyio.sleep(delay)


class ResourcePool:
    """Hands out GPU ids and CPU cores so that no two running jobs share either.

    A job asks for ``gpus`` ids and ``cpus`` cores together and waits until
    both are free: holding GPUs while waiting for cores (or the reverse) would
    let two jobs each hold half of what the other needs. Requests are served
    strictly in arrival order, so a job wanting 4 GPUs is not starved by a
    stream of 1-GPU jobs slipping past it. ``affinity`` (GPU id -> its nearest
    cores) steers which cores, see :func:`caliban.core.topology.choose`.
    """

    def __init__(
        self,
        ids: Sequence[str] = (),
        cores: Sequence[int] = (),
        affinity: Mapping[str, GpuAffinity] | None = None,
    ) -> None:
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate GPU ids in {list(ids)}")
        if len(set(cores)) != len(cores):
            raise ValueError(f"duplicate cores in {list(cores)}")
        self.ids: tuple[str, ...] = tuple(ids)
        self.cores: tuple[int, ...] = tuple(sorted(cores))
        self._affinity = dict(affinity or {})
        self._free: set[str] = set(ids)
        self._free_cores: set[int] = set(cores)
        self._queue: deque[object] = deque()
        self._cond = anyio.Condition()

    @property
    def free(self) -> frozenset[str]:
        return frozenset(self._free)

    @property
    def free_cores(self) -> frozenset[int]:
        return frozenset(self._free_cores)

    def _pick(self, gpus: int, cpus: int) -> Choice | None:
        ordered = [g for g in self.ids if g in self._free]
        return topology.choose(ordered, gpus, self._free_cores, cpus, self._affinity)

    @asynccontextmanager
    async def hold(self, gpus: int, cpus: int = 0) -> AsyncIterator[Choice]:
        if not 0 <= gpus <= len(self.ids) or not 0 <= cpus <= len(self.cores):
            raise ValueError(
                f"cannot hold {gpus} of {len(self.ids)} GPUs and {cpus} of {len(self.cores)} cores"
            )
        ticket = object()
        async with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or (choice := self._pick(gpus, cpus)) is None:
                    await self._cond.wait()
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._free.difference_update(choice.gpus)
            self._free_cores.difference_update(choice.cpus)
            # The next in line may fit in what is left.
            self._cond.notify_all()
        try:
            yield choice
        finally:
            with anyio.CancelScope(shield=True):
                async with self._cond:
                    self._free.update(choice.gpus)
                    self._free_cores.update(choice.cpus)
                    self._cond.notify_all()


class GpuPool(ResourcePool):
    """A :class:`ResourcePool` of GPU ids only."""

    def __init__(self, ids: Sequence[str]) -> None:
        super().__init__(ids)

    @asynccontextmanager
    async def acquire(self, count: int) -> AsyncIterator[tuple[str, ...]]:
        if not 0 < count <= len(self.ids):
            raise ValueError(f"cannot hold {count} of {len(self.ids)} GPUs")
        async with self.hold(count) as choice:
            yield choice.gpus


@dataclass(frozen=True)
class Pacing:
    """``rate_per_minute`` per quota key; ``max_inflight`` requests at once."""

    rate_per_minute: float = 60.0
    max_inflight: int = 16
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def burst(self) -> float:
        # Two requests absorb a late wake-up without losing pace; a larger
        # burst only buys a faster first second at the cost of the quota.
        return 2.0 if self.rate_per_minute >= 120 else 1.0

    @property
    def rate_per_second(self) -> float:
        """The bucket's refill rate. Google counts a per-minute quota over any 60 s
        (a sliding window), and a bucket that starts full hands out ``burst`` more
        than its rate in the first minute: refill slower by that much, so that
        ``burst + 60 * rate <= rate_per_minute`` and no window ever goes over."""
        per_minute = self.rate_per_minute
        return max(per_minute - self.burst, per_minute / 2) / 60.0
