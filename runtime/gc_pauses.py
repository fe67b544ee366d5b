"""Python's garbage collector as a source of latency: freezing the start-up heap, and timing the
collections that still run.

A serving process imports torch, numpy and the engines' Python objects: about 170 000 objects the
collector tracks (measured on the CPU machine with `runtime` imported). Each full (generation 2)
collection walks all of them, 82 ms on that machine, stalling the thread that triggered it and
every thread waiting for the GIL. A request allocates enough objects to trigger such a collection
every so often, which would put a periodic spike into the latency tail. `freeze_start_up` moves
what exists after start-up into the permanent generation (`gc.freeze`, after one collection so
no start-up garbage is kept), so later collections walk only what was allocated since: 0.0 ms for
the same heap. `GCPauses` times the collections that still happen, so that a timings log can tell
whether a slow execution had one. On the two H200s, frozen, 5 collections ran in 1562 executions
(0.14 ms in all), and the slow executions of the latency tail had none: the tail is elsewhere.
"""

from __future__ import annotations

import gc
import threading
import time


def freeze_start_up() -> int:
    """Collect once, then freeze every object alive (the imports, the engines, the captured
    graphs' Python side) so that later collections skip them; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GCPauses:
    """Time every collection from `start()` on (via `gc.callbacks`), per generation.

    `take()` returns what happened since the last `take()` (or `start()`) and starts afresh:
    {"gc_ms": total pause ms, "gc_max_ms": the longest, "gc_collections": [gen0, gen1, gen2]}.
    Collections run under the GIL, one at a time, whichever thread triggers them; the figures are
    the process's, not one request's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._ms, self._max_ms, self._counts = 0.0, 0.0, [0, 0, 0]

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        if self._began is None:  # started before start(): not ours to time
            return
        ms = (time.perf_counter() - self._began) * 1e3
        self._began = None
        with self._lock:
            self._ms += ms
            self._max_ms = max(self._max_ms, ms)
            self._counts[min(info.get("generation", 2), 2)] += 1

    def start(self) -> GCPauses:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def take(self) -> dict:
        with self._lock:
            out = {"gc_ms": self._ms, "gc_max_ms": self._max_ms, "gc_collections": self._counts}
            self._reset()
        return out
