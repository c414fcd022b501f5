"""Submitting many jobs to a remote platform: paced, bounded, retried, never twice.

Used by the Vertex and Kubernetes backends, which only say how to create one
job and how to look one up by its caliban job id (:class:`Submitter`). For
every job this engine:

1. looks it up first if an earlier run may have created it (a PLANNED job
   handed back by the store, or a create whose answer was lost);
2. waits for a token of the job's quota bucket (one per project and region),
   then sends the create, with at most ``max_inflight`` requests in flight;
3. retries 429, 5xx and connection errors with jittered exponential backoff,
   honouring Retry-After (which also pauses the whole bucket), up to a cap;
4. records SUBMITTED with the platform's name for it, or FAILED with the reason.

A job whose create may or may not have happened is never sent blindly again:
the lookup decides. That is what makes "no duplicates" hold under lost
responses, crashes and Ctrl-C.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import anyio

from caliban.adapters.store import Planned, Store
from caliban.errors import AuthError, BackendError, CalibanError, OutcomeUnknown, QuotaError
from caliban.events import JobStateChanged, RetryScheduled, Sink
from caliban.limits import Pacing, RetryPolicy, TokenBucket, with_retries
from caliban.platforms.base import Submitter, job_label
from caliban.spec import JobRecord, JobState, Update

if sys.version_info < (3, 11):  # the builtin arrived in 3.11; anyio brings the backport
    from exceptiongroup import BaseExceptionGroup


# Added to a pause whose length the server named (see on_retry below).
SERVER_DELAY_MARGIN = 0.05
# The shortest time between two writes of the recorder while jobs are being sent.
RECORD_INTERVAL = 0.05


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def submit_all(
    planned: Sequence[Planned],
    submitter: Submitter,
    *,
    store: Store,
    sink: Sink,
    pacing: Pacing,
    total: int,
) -> None:
    """Submit every ``new``/``reconcile`` job and record what became of each.

    Nothing is read back: the caller reads the store once, when the whole launch
    is over (see :func:`caliban.sweep.engine.launch`)."""
    todo = [p for p in planned if p.action in ("new", "reconcile")]
    buckets: dict[str, TokenBucket] = {}
    send, receive = anyio.create_memory_object_stream[Planned](math.inf)
    for p in todo:
        send.send_nowait(p)
    send.close()

    # Update jobs are recorded by one recorder task, in one transaction for all
    # that arrived since its last write: workers never wait on SQLite, so a fast
    # platform (hundreds of creates a second) is not slowed by the store, and a slow
    # one still has each job recorded at once. Writes are at least RECORD_INTERVAL
    # apart while jobs are being sent: each is a handful of hand-offs to SQLite's
    # thread, and writing after every answer cost a fifth of a fast fan-out's CPU.
    # A job not yet recorded when the process dies is still PLANNED, so it is looked
    # up, never sent again.
    unrecorded: list[
        tuple[str, JobState, int | None, str | None, str | None, dict[str, object] | None]
    ] = []
    wake = anyio.Event()
    ended = anyio.Event()
    submitting = True

    async def flush() -> None:
        batch, unrecorded[:] = unrecorded[:], []
        if batch:
            try:
                # Shielded: a write is short, and a transaction cut off by Ctrl-C
                # between BEGIN and COMMIT would block the final flush.
                with anyio.CancelScope(shield=True):
                    await store.transitions(batch)
            except BaseException:
                unrecorded[:0] = batch  # the final flush tries again
                raise

    async def recorder() -> None:
        nonlocal wake
        last = -math.inf
        while submitting or unrecorded:
            await wake.wait()
            early = last + RECORD_INTERVAL - anyio.current_time()
            if early > 0:
                # More answers arrive meanwhile; the end of the submission cuts it short.
                with anyio.move_on_after(early):
                    await ended.wait()
            wake = anyio.Event()
            await flush()
            last = anyio.current_time()

    def bucket(job: JobRecord) -> TokenBucket:
        key = submitter.quota_key(job)
        if key not in buckets:
            buckets[key] = TokenBucket(pacing.rate_per_second, pacing.burst)
        return buckets[key]

    async def submit_one(p: Planned) -> None:
        job = p.job
        label = job_label(job, total)
        uncertain = p.action == "reconcile"
        # Set after a create timed out: the server may still be working on it.
        settle: float | None = None

        async def attempt() -> Update:
            nonlocal uncertain, settle
            if uncertain:
                found = await submitter.find(job)
                if found is None and settle:
                    # Not there yet is weak evidence after a timeout (the retry
                    # already waited once): give the server as long again.
                    await anyio.sleep(settle)
                    found = await submitter.find(job)
                if found is not None:
                    return found
                uncertain, settle = False, None
            await bucket(job).acquire()
            try:
                return await submitter.create(job)
            except OutcomeUnknown as exc:
                uncertain, settle = True, exc.retry_after
                raise

        def on_retry(number: int, delay: float, exc: BaseException) -> None:
            if isinstance(exc, QuotaError):
                # Over the quota: the whole bucket waits (for Retry-After when
                # the server said, else this job's backoff), not just this job.
                # A delay the server names is its earliest (RetryInfo is rounded
                # to the millisecond): a hair early costs one more 429 for every
                # request in flight, so the bucket waits a little longer.
                named = exc.retry_after is not None
                bucket(job).pause(delay + (SERVER_DELAY_MARGIN if named else 0.0))
            elif (
                isinstance(exc, BackendError)
                and exc.retry_after is not None
                and not isinstance(exc, OutcomeUnknown)  # its wait is only its own
            ):
                bucket(job).pause(exc.retry_after)
            reason = exc.message if isinstance(exc, BackendError) else str(exc)
            sink(RetryScheduled(job.job_id, number, delay, reason))

        try:
            accepted = await with_retries(attempt, pacing.policy, on_retry=on_retry)
        except AuthError:
            # Every other job would be refused the same way: stop the whole
            # submission. Jobs not sent stay PLANNED for the next attempt.
            raise
        except BackendError as exc:
            found: Update | None = None
            if uncertain:
                try:
                    found = await with_retries(
                        lambda: submitter.find(job), RetryPolicy(attempts=4, initial=1)
                    )
                except BackendError:
                    # It may exist: leave it PLANNED so the next status,
                    # resubmit or re-run looks it up instead of sending it again.
                    detail = f"outcome unknown ({exc.message}); it will be looked up again"
                    sink(
                        JobStateChanged(
                            job.job_id, label, JobState.UNKNOWN, detail=detail, argv=job.args
                        )
                    )
                    return
            if found is None:
                await store.transition(job.job_id, JobState.FAILED, message=exc.message)
                sink(
                    JobStateChanged(
                        job.job_id, label, JobState.FAILED, detail=exc.message, argv=job.args
                    )
                )
                return
            accepted = found
        # The row under this job's id, whatever id the platform's answer carried.
        unrecorded.append((job.job_id, *accepted.row()[1:]))
        wake.set()
        sink(
            JobStateChanged(
                job.job_id,
                label,
                accepted.state,
                detail=accepted.url or accepted.platform_id,
                argv=job.args,
            )
        )

    async def worker() -> None:
        async with receive.clone() as jobs:
            async for p in jobs:
                await submit_one(p)

    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(recorder)
            try:
                async with anyio.create_task_group() as tg:
                    for _ in range(max(1, min(pacing.max_inflight, len(todo)))):
                        tg.start_soon(worker)
            finally:
                submitting = False
                ended.set()
                wake.set()
    except BaseExceptionGroup as group:
        # Several workers meet the same refusal at once: callers get one
        # CalibanError, not a group of copies.
        matched, rest = group.split(CalibanError)
        if matched is None or rest is not None:
            raise
        raise _first_leaf(matched) from None
    finally:
        receive.close()
        # Also after Ctrl-C or a failure: what the platform accepted is recorded.
        with anyio.CancelScope(shield=True):
            await flush()
