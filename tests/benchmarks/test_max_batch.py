"""benchmarks.max_batch: the search rules and what counts as running out of memory.

python -m pytest tests/benchmarks/test_max_batch.py -q
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import max_batch
from benchmarks.max_batch import double_then_bisect, fits_in_memory, largest_fitting


def test_max_batch_search_rules() -> None:
    s = double_then_bisect(lambda b: b <= 37, 256)
    assert s.batch == 37
    assert [t["batch"] for t in s.trials] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert double_then_bisect(lambda b: True, 100).batch == 100  # capped, never above the limit
    assert double_then_bisect(lambda b: b <= 5, 6).batch == 5  # 1, 2, 4, 6 (fails), 5
    assert double_then_bisect(lambda b: False, 8).batch == 0
    s = largest_fitting(lambda b: b <= 8, [16, 1, 8, 4])
    assert (s.batch, [t["batch"] for t in s.trials]) == (8, [16, 8])
    assert s.to_json()["built_batches"] == [1, 4, 8, 16]


def test_step_down_takes_the_next_smaller_candidate() -> None:
    s = double_then_bisect(lambda b: b <= 5, 8)
    assert s.step_down([1, 2, 4, 5]) == 4 and s.step_down([1, 2, 4, 5]) == 2
    assert s.to_json()["timing_out_of_memory"] == [5, 4]


def test_only_out_of_memory_counts_as_not_fitting() -> None:
    def oom() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    def bug() -> None:
        raise RuntimeError("a bug, not memory")

    cpu = torch.device("cpu")
    assert fits_in_memory(lambda: None, cpu) is True
    assert fits_in_memory(oom, cpu) is False
    with pytest.raises(RuntimeError, match="a bug"):
        fits_in_memory(bug, cpu)


def test_a_wrapped_out_of_memory_counts_when_the_allocator_saw_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AOTInductor turns an OOM inside a package into RuntimeError; the allocator's count tells."""
    ooms = [0]
    monkeypatch.setattr(max_batch, "oom_count", lambda device: ooms[0])

    def package_oom() -> None:
        ooms[0] += 1  # what the caching allocator records before the package wraps the error
        raise RuntimeError("run_func_(...) API call failed at model_container_runner.cpp")

    def package_bug() -> None:
        raise RuntimeError("run_func_(...) API call failed at model_container_runner.cpp")

    cuda = torch.device("cuda", 0)  # only handed to the patched counter; nothing touches a GPU
    monkeypatch.setattr(max_batch, "free_memory", lambda device: None)
    assert fits_in_memory(package_oom, cuda) is False
    with pytest.raises(RuntimeError, match="API call failed"):
        fits_in_memory(package_bug, cuda)
