"""The first wave of a pre-warmed sweep: no slot warms its next container before
every slot's first one has started, unless its own job is over first."""

from __future__ import annotations

import anyio

from caliban.platforms.local import prewarm


def test_the_wave_is_in_once_every_slot_has_arrived() -> None:
    wave = prewarm.FirstWave(3)
    wave.arrive()
    wave.arrive()
    assert not wave.started.is_set()
    wave.arrive()
    assert wave.started.is_set()
    assert prewarm.FirstWave(0).started.is_set()


async def test_a_slot_waits_for_the_wave_or_its_own_job_whichever_comes_first() -> None:
    wave, over = anyio.Event(), anyio.Event()
    with anyio.move_on_after(0.05) as scope:
        await prewarm._either(wave, over)
    assert scope.cancelled_caught  # neither: still waiting
    over.set()
    with anyio.fail_after(1):
        await prewarm._either(wave, over)
    with anyio.fail_after(1):
        await prewarm._either(anyio.Event(), over)
