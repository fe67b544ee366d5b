"""CUDA-graph capture of a whole generation chain, replayed per request.

Rules (style guide 24): capture only after a warm-up run; nothing inside the captured region may
synchronise with the host or branch on tensor values; per-request data (noise, text tokens, BPM,
width) lives in static input buffers that are overwritten before each replay. Allocations inside
the capture come from the graph's private memory pool, so the outputs are static too: `replay`
returns clones.

That pool cannot give cached blocks back to the driver while the capture runs, so with the caching
allocator's fixed-size segments it fragments: batch 64 of 32 s stereo on the H200 needed more than
144.8 GiB captured, against 80.9 GiB reserved uncaptured; with expandable segments the capture
reserved 83.0 GiB (docs/measurements.md). `use_expandable_segments` asks for them, and a capture
that runs out of memory raises torch.OutOfMemoryError naming the fixes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

EXPANDABLE_SEGMENTS = "expandable_segments:True"
# The caching allocator's settings variables, current name first (torch reads both).
ALLOC_CONF_VARIABLES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
_handed = ""  # what set_allocator_settings last handed to the allocator, process-wide


def use_expandable_segments() -> bool:
    """Switch the CUDA caching allocator to expandable segments unless the process chose its own
    settings (either ALLOC_CONF_VARIABLES set); True if this call switched them.

    Segments the allocator already made stay as they are, so call it before large allocations;
    `Pipeline(cuda_graph=True)` on CUDA does.
    """
    chosen = [name for name in ALLOC_CONF_VARIABLES if os.environ.get(name)]
    if chosen:
        log.debug("allocator settings left as %s chose them", chosen[0])
        return False
    if EXPANDABLE_SEGMENTS in allocator_settings():  # switched already
        return False
    set_allocator_settings(EXPANDABLE_SEGMENTS)
    log.info("CUDA caching allocator: %s (captures fragment without it)", EXPANDABLE_SEGMENTS)
    return True


def set_allocator_settings(settings: str) -> None:
    """Hand `settings` ("key:value,...") to the caching allocator, as the environment variable would
    at start-up; segments it made already keep their kind."""
    global _handed
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch >= 2.9
    if setter is None:
        setter = torch.cuda.memory._set_allocator_settings
    setter(settings)
    _handed = settings


def allocator_settings() -> str:
    """The caching allocator's settings ('' for the defaults): what torch reports, else what
    set_allocator_settings handed it, else the environment's.

    torch 2.11's CUDA build reported '' after the setter had switched the allocator (the 7683c7a
    round on the H200 logged the switch once per pipeline and recorded '' in every row), so the
    runtime keeps its own record of what it handed over."""
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    reported = getter() if getter is not None else ""
    env = next((os.environ[n] for n in ALLOC_CONF_VARIABLES if os.environ.get(n)), "")
    return reported or _handed or env


def oom_count(device: torch.device) -> int:
    """Out-of-memory events the CUDA caching allocator has counted on `device` (0 on the CPU).

    AOTInductor packages report an allocation failure inside them as a plain RuntimeError, so a
    rise in this count is how a caller tells that one ran out of memory (here and in
    benchmarks.max_batch)."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.memory_stats(device).get("num_ooms", 0))


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
            ooms = oom_count(self.device)
            # A capture stream on this GPU: torch.cuda.graph's default one is made once per process
            # on whichever GPU was current then, and a capture for another GPU on it records
            # nothing (AOTInductor packages fail with "invalid resource handle").
            try:
                with torch.cuda.graph(self.graph, stream=torch.cuda.Stream()):
                    self.static_outputs = fn(*self.static_inputs)
            except Exception as err:
                if isinstance(err, torch.OutOfMemoryError) or oom_count(self.device) > ooms:
                    raise torch.OutOfMemoryError(self._oom_message()) from err
                raise
        log.info(
            "captured a CUDA graph on %s for inputs %s",
            self.device,
            [tuple(t.shape) for t in example_inputs],
        )

    def _oom_message(self) -> str:
        settings = allocator_settings()
        shapes = [tuple(t.shape) for t in self.static_inputs]
        return (
            f"capturing a CUDA graph on {self.device} for inputs {shapes} ran out of GPU memory "
            f"(allocator settings: {settings or 'the defaults'}). A capture cannot give cached "
            f"blocks back, so with fixed-size segments it needs far more than the uncaptured run. "
            f"Set {ALLOC_CONF_VARIABLES[0]}={EXPANDABLE_SEGMENTS} before the process first uses "
            f"CUDA (Pipeline does when nothing is set), use a smaller batch bucket, or pass "
            f"cuda_graph=False"
        )

    def replay(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Copy `inputs` into the graph's buffers, replay, and return copies of the outputs."""
        with torch.cuda.device(self.device):
            for buffer, value in zip(self.static_inputs, inputs, strict=True):
                buffer.copy_(value)
            self.graph.replay()
            return tuple(t.clone() for t in self.static_outputs)
