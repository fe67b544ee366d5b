"""The largest batch that fits in memory: searched for eager models, chosen among built buckets.

A trial is one full stereo generation at the benchmark duration. It fails only when memory ran
out: torch.cuda.OutOfMemoryError, or any exception raised while the CUDA caching allocator counted a
new out-of-memory event (AOTInductor packages report an allocation failure inside the package as a
plain RuntimeError). Anything else propagates. Memory is freed between trials.

- Eager models take any batch: `double_then_bisect` tries 1, 2, 4, ... up to a limit, then bisects
  between the last batch that fitted and the first that did not.
- Engines have static batch buckets: `largest_fitting` tries the built batch sizes from the largest
  down and takes the first that runs, so the answer is limited to what the build holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.measure import free_memory
from runtime import oom_count

log = logging.getLogger(__name__)

Fits = Callable[[int], bool]


@dataclass
class BatchSearch:
    """Outcome of a search: the batch found (0 when none fitted) and every trial made, in order."""

    method: str  # "double-then-bisect" or "largest-built-bucket"
    batch: int = 0
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"batch": int, "fits": bool}
    limit: int | None = None  # --max-batch-limit (double-then-bisect)
    built_batches: list[int] | None = None  # the candidates (largest-built-bucket)
    # Batches where one generation fitted but timing every stage ran out of memory (the stages
    # hold each other's inputs, and the allocator fragments); `batch` is then the next that fitted.
    timing_out_of_memory: list[int] = field(default_factory=list)

    def step_down(self, candidates: Sequence[int]) -> int:
        """Record that timing at `batch` ran out of memory; the next smaller candidate (0: none)."""
        self.timing_out_of_memory.append(self.batch)
        self.batch = max((b for b in candidates if b < self.batch), default=0)
        return self.batch

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "batch": self.batch, "trials": self.trials}
        if self.limit is not None:
            out["limit"] = self.limit
            out["hit_limit"] = self.batch == self.limit
        if self.built_batches is not None:
            out["limited_to_built_buckets"] = True
            out["built_batches"] = self.built_batches
        if self.timing_out_of_memory:
            out["timing_out_of_memory"] = self.timing_out_of_memory
        return out


def ran_out_of_memory(err: BaseException, ooms_before: int, device: torch.device) -> bool:
    """Whether `err` means memory ran out: its type, or a new allocator OOM event since ooms_before."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(err, Exception) and oom_count(device) > ooms_before:
        log.info("out of memory, reported as %s: %s", type(err).__name__, str(err)[:200])
        return True
    return False


def fits_in_memory(run: Callable[[], Any], device: torch.device) -> bool:
    """True if run() returns, False if it ran out of memory (see above); frees memory after."""
    before = oom_count(device)
    try:
        run()
    except Exception as err:
        if not ran_out_of_memory(err, before, device):
            raise
        ok = False
    else:
        ok = True
    free_memory(device)  # outside the except block, where the traceback's frames are already gone
    return ok


def _trial(search: BatchSearch, fits: Fits, batch: int, label: str) -> bool:
    ok = fits(batch)
    search.trials.append({"batch": batch, "fits": ok})
    log.info(
        "%s: max-batch trial %d at batch %d: %s",
        label,
        len(search.trials),
        batch,
        "fits" if ok else "out of memory",
    )
    return ok


def double_then_bisect(fits: Fits, limit: int, label: str = "") -> BatchSearch:
    """Largest batch in 1..limit for which fits(batch) holds, assuming fits is monotone.

    >>> s = double_then_bisect(lambda b: b <= 37, 256)
    >>> s.batch, [t["batch"] for t in s.trials]
    (37, [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37])
    >>> double_then_bisect(lambda b: True, 100).batch
    100
    """
    if limit < 1:
        raise ValueError(f"limit={limit} must be >= 1")
    search = BatchSearch(method="double-then-bisect", limit=limit)
    good, bad, batch = 0, None, 1
    while True:
        if _trial(search, fits, batch, label):
            good = batch
        else:
            bad = batch
            break
        if batch >= limit:
            break
        batch = min(2 * batch, limit)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if _trial(search, fits, mid, label):
            good = mid
        else:
            bad = mid
    search.batch = good
    return search


def largest_fitting(fits: Fits, candidates: Sequence[int], label: str = "") -> BatchSearch:
    """The largest of `candidates` for which fits(batch) holds, trying from the largest down.

    >>> s = largest_fitting(lambda b: b <= 8, [1, 4, 16, 8])
    >>> s.batch, [t["batch"] for t in s.trials], s.built_batches
    (8, [16, 8], [1, 4, 8, 16])
    """
    ordered = sorted(set(candidates))
    search = BatchSearch(method="largest-built-bucket", built_batches=ordered)
    for batch in reversed(ordered):
        if _trial(search, fits, batch, label):
            search.batch = batch
            break
    return search
