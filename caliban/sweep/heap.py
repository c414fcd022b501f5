"""Keeping the cyclic garbage collector off the long-lived heap while a sweep runs.

By the time a sweep plans its jobs, the process holds every module it needs (the
Kubernetes client alone brings hundreds of thousands of objects), and the sweep
then allocates a few objects per job for a second or two. Python's collector
rescans the whole old generation now and then; during a 500-job fan-out that was
one pause of 50-75 ms, a tenth of the sweep's wall time. :func:`old_objects_frozen`
moves what exists when the sweep starts to the collector's permanent generation
(``gc.freeze``) for the sweep's duration, so those scans only cover what the
sweep itself made. Nothing stops being collected by reference counting; cycles
among the frozen objects wait for the end of the sweep, when ``gc.unfreeze``
hands them back to the oldest generation.

The collector's state is the whole process's: the scope is shared by every sweep
running at once (in any task or thread), frozen by the first to enter, thawed by
the last to leave, and left alone when the collector is disabled or something
else froze objects before (a pre-fork server).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_owned = False  # whether the current freeze is this module's to undo


@contextmanager
def old_objects_frozen() -> Iterator[None]:
    """Freeze the objects that exist now for the duration of the block (see above)."""
    global _depth, _owned
    with _lock:
        if _depth == 0:
            _owned = gc.isenabled() and gc.get_freeze_count() == 0
            if _owned:
                gc.freeze()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _owned:
                _owned = False
                gc.unfreeze()


__all__ = ["old_objects_frozen"]
