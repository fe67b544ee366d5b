"""runtime/gc_pauses.py: the start-up heap frozen out of garbage collection, and the collections
that still run timed per generation (CPU).

Run: python -m pytest tests/runtime/test_gc_pauses.py
"""

from __future__ import annotations

import gc

import pytest

from runtime.gc_pauses import GCPauses, freeze_start_up


@pytest.fixture
def thawed():
    """Leave the test process's collector as it was: nothing frozen afterwards."""
    assert gc.get_freeze_count() == 0, "another test left objects frozen"
    yield
    gc.unfreeze()


def test_forced_collections_are_counted_and_timed_then_reset():
    hooks = len(gc.callbacks)
    pauses = GCPauses().start()
    try:
        gc.collect()  # a full collection: generation 2
        gc.collect(0)
        got = pauses.take()
        assert got["gc_collections"][2] >= 1 and got["gc_collections"][0] >= 1
        assert 0 < got["gc_max_ms"] <= got["gc_ms"]
        assert pauses.take() == {"gc_ms": 0.0, "gc_max_ms": 0.0, "gc_collections": [0, 0, 0]}
    finally:
        pauses.stop()
    assert len(gc.callbacks) == hooks
    gc.collect()
    assert pauses.take()["gc_collections"] == [0, 0, 0]  # stopped: no longer counted


def test_start_and_stop_are_idempotent():
    hooks = len(gc.callbacks)
    pauses = GCPauses()
    pauses.start().start()
    assert len(gc.callbacks) == hooks + 1
    pauses.stop()
    pauses.stop()
    assert len(gc.callbacks) == hooks


def test_freeze_moves_the_live_heap_out_of_collection(thawed):
    alive = len(gc.get_objects())
    frozen = freeze_start_up()
    # The imports, at least. (Frozen objects can still be freed by reference counting, so the
    # count may have dropped by a few since the call returned.)
    assert frozen >= alive // 2 and gc.get_freeze_count() > frozen // 2
    # What a full collection still walks: only what was allocated after the freeze.
    assert len(gc.get_objects()) < alive - frozen // 2
