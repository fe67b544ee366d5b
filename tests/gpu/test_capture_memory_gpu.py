"""CapturedChain's memory: expandable segments switched on, and a capture out of memory explained.

    python -m pytest -q -rs -m gpu tests/gpu/test_capture_memory_gpu.py

With fixed-size segments, batch 64 of 32 s stereo on the H200 needed more than 144.8 GiB to
capture, against 80.9 GiB uncaptured; with expandable segments it captured in 83.0 GiB
(docs/measurements.md). These tests check the two halves of the fix on plain torch ops: the runtime's
switch reaches the CUDA allocator, and an OOM inside a capture is a torch.OutOfMemoryError that
names the fixes, after which the process captures again.
"""

from __future__ import annotations

import os

import pytest
import torch

from runtime.graphs import (
    ALLOC_CONF_VARIABLES,
    EXPANDABLE_SEGMENTS,
    CapturedChain,
    allocator_settings,
    set_allocator_settings,
    use_expandable_segments,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def segment_of(t: torch.Tensor) -> dict:
    """The caching allocator's segment holding t's storage."""
    address = t.data_ptr()
    for seg in torch.cuda.memory_snapshot():
        if seg["address"] <= address < seg["address"] + seg["total_size"]:
            return seg
    raise AssertionError(f"no segment holds address {address:#x}")


def test_the_switch_reaches_the_cuda_allocator() -> None:
    if any(os.environ.get(name) for name in ALLOC_CONF_VARIABLES):
        pytest.skip("the process chose its own allocator settings")
    if EXPANDABLE_SEGMENTS in allocator_settings():
        pytest.skip("expandable segments are on already")
    before = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    assert not segment_of(before).get("is_expandable", False)
    try:
        assert use_expandable_segments() is True
        after = torch.empty(96 * 2**20, dtype=torch.uint8, device="cuda")  # a new segment
        assert segment_of(after)["is_expandable"] is True
        del after
    finally:
        torch.cuda.empty_cache()
        set_allocator_settings("expandable_segments:False")


def larger_than_the_gpu_inside_a_capture(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cheap eagerly (the warm-up); inside a capture, asks for twice the GPU's memory."""
    if torch.cuda.is_current_stream_capturing():
        total = torch.cuda.get_device_properties(x.device).total_memory
        huge = torch.empty(2 * total, dtype=torch.uint8, device=x.device)
        return (x + huge[:1].float(),)
    return (x + 1,)


def test_a_capture_out_of_memory_names_the_fixes_and_the_next_one_works() -> None:
    x = torch.ones(8, device="cuda")
    with pytest.raises(torch.OutOfMemoryError, match="expandable_segments:True") as info:
        CapturedChain(larger_than_the_gpu_inside_a_capture, [x])
    assert "cuda_graph=False" in str(info.value) and "[(8,)]" in str(info.value)
    graph = CapturedChain(lambda t: (t * 3,), [x])
    (y,) = graph.replay([torch.full((8,), 2.0, device="cuda")])
    torch.testing.assert_close(y, torch.full((8,), 6.0, device="cuda"), rtol=0, atol=0)
