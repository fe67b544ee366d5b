"""Device-to-host copies of generated audio through pinned buffers that are reused per shape.

A take of 32 s stereo is 11 MiB of float32 and a batch-8 bucket's audio 90 MiB. `tensor.cpu()`
copies into fresh pageable memory: the driver stages the transfer through its own pinned buffer and
the new allocation faults in every page. Measured on the two-H200 machine (torch 2.11, means of 10
copies, alone and with the other GPU copying at once; a second run put the fresh 90 MiB copy at 59
ms alone and 70-76 ms beside the other GPU's):

    size     fresh pageable (.cpu())   reused pageable   reused pinned
    11 MiB          1.4-1.6 ms             0.7-0.9 ms        0.22 ms
    90 MiB         58-65 ms                5.4-6.1 ms        1.72 ms

and the server's batch-8 executions (390 ms median in that round's one-GPU load at concurrency 32)
made that 90 MiB copy once each. `HostStaging.to_host` copies into a page-locked buffer kept for
that shape instead and returns a view of it, valid until the next copy of the same shape: callers
copy out of it (as `Pipeline.generate_takes` does into the request's own array) before they let go
of the lock that serialises the pipeline's calls. CPU tensors are returned as they are (no copy),
as before.

Pinned memory is page-locked host memory: a pipeline keeps one buffer per audio shape it has
produced (its buckets' (B, C, T)), 11 MiB per take of 32 s stereo, for its lifetime.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class HostStaging:
    """Pinned float32 host buffers, one per shape, for the copies of one device's outputs."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, ...], Tensor] = {}

    def to_host(self, t: Tensor) -> np.ndarray:
        """t (any shape, any float dtype) -> float32 array of its values on the host.

        On CUDA: a view of the pinned buffer for t's shape, overwritten by the next `to_host` of
        that shape; the copy is complete when this returns. On the CPU: t's own memory when t is
        float32 (else a converted copy), as `t.to("cpu", torch.float32).numpy()`.
        """
        if t.device.type != "cuda":
            return t.to("cpu", torch.float32).numpy()
        shape = tuple(t.shape)
        buffer = self._buffers.get(shape)
        if buffer is None:
            buffer = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            self._buffers[shape] = buffer
        buffer.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        return buffer.numpy()

    @property
    def pinned_bytes(self) -> int:
        """Page-locked host memory held, in bytes."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def release(self) -> int:
        """Forget every buffer, so that it is freed (to torch's pinned-memory cache) once no array
        returned by `to_host` refers to it; returns how many there were."""
        count = len(self._buffers)
        self._buffers.clear()
        return count
