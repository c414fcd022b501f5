"""The collector's scope around a sweep: frozen while any sweep runs, restored after."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from caliban.sweep.heap import old_objects_frozen


class _Node:
    def __init__(self) -> None:
        self.other: object = self


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    gc.unfreeze()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    yield
    gc.enable()
    gc.unfreeze()


def test_what_exists_is_frozen_for_the_block_and_thawed_after() -> None:
    cycle = _Node()
    alive = weakref.ref(cycle)
    with old_objects_frozen():
        assert gc.get_freeze_count() > 0
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: full collections skip it
        young = _Node()
        young_alive = weakref.ref(young)
        del young
        gc.collect()
        assert young_alive() is None  # what the block makes is still collected
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None


def test_overlapping_sweeps_share_one_freeze_and_an_error_still_thaws() -> None:
    first, second = old_objects_frozen(), old_objects_frozen()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0  # the second sweep still runs
    second.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), old_objects_frozen():
        raise RuntimeError("the sweep failed")
    assert gc.get_freeze_count() == 0


def test_someone_elses_freeze_and_a_disabled_collector_are_left_alone() -> None:
    gc.freeze()
    before = gc.get_freeze_count()
    with old_objects_frozen():
        pass
    assert gc.get_freeze_count() == before  # not thawed: it was not ours
    gc.unfreeze()
    gc.disable()
    with old_objects_frozen():
        assert gc.get_freeze_count() == 0
    assert not gc.isenabled()
