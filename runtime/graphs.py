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
        # The inputs' GPU, made current for the capture: torch.cuda.graph captures on a stream of
        # the current device, so a chain on any other GPU would run outside the capture. Nothing
        # else in the runtime sets the device; in the H200 round (8f2efd5) loading the packages on
        # cuda:1 had left cuda:1 current, and f422f57's runtime, without this guard, replayed a
        # pipeline on cuda:1 bit for bit equal to its uncaptured chain. The guard makes it a rule.
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
            with torch.cuda.graph(self.graph):
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
