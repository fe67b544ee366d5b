"""CUDA-graph capture of a whole generation chain, replayed per request.

Rules (style guide 24): capture only after a warm-up run; nothing inside the captured region may
synchronise with the host or branch on tensor values; per-request data (noise, text tokens, BPM,
width) lives in static input buffers that are overwritten before each replay. Allocations inside
the capture come from the graph's private memory pool, so the outputs are static too: `replay`
returns clones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class CapturedChain:
    """`fn(*inputs) -> tuple[Tensor, ...]` captured once for the shapes of `example_inputs`."""

    def __init__(
        self,
        fn: Callable[..., tuple[Tensor, ...]],
        example_inputs: Sequence[Tensor],
        warmup_runs: int = 2,
    ) -> None:
        # The inputs' GPU, made current for the warm-up and the capture: the streams below are
        # made on the current device, and a chain on any other GPU would run outside the capture
        # (an empty graph whose replays return the capture run's outputs). Nothing else in the
        # runtime leaves another device current (TorchEngine restores it after loading).
        self.device = example_inputs[0].device
        with torch.cuda.device(self.device):
            self.static_inputs = [t.clone() for t in example_inputs]
            self.graph = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: lazy initialisation, allocator, kernels
                for _ in range(warmup_runs):
                    fn(*self.static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            # The capture allocates from the graph's private pool, which cannot reuse the blocks
            # the warm-up left cached: give those back first, or a bucket whose chain needs more
            # than half the GPU runs out of memory (batch 64 of 32 s stereo on the H200: 84 GB).
            torch.cuda.empty_cache()
            # A capture stream on this GPU: torch.cuda.graph's default one is made once per process
            # on whichever GPU was current then, and a capture for another GPU on it records
            # nothing (AOTInductor packages fail with "invalid resource handle").
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream()):
                self.static_outputs = fn(*self.static_inputs)
        log.info(
            "captured a CUDA graph on %s for inputs %s",
            self.device,
            [tuple(t.shape) for t in example_inputs],
        )

    def replay(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Copy `inputs` into the graph's buffers, replay, and return copies of the outputs."""
        with torch.cuda.device(self.device):
            for buffer, value in zip(self.static_inputs, inputs, strict=True):
                buffer.copy_(value)
            self.graph.replay()
            return tuple(t.clone() for t in self.static_outputs)
