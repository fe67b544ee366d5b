"""Copies between the host and the device through pinned buffers that are reused per shape: the
generated audio down (`HostStaging`), each request's noise up (`PinnedUpload`).

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

The noise of a request (num_draws x (B, C_lat, T_lat), 1.5 MiB per take of 32 s) goes up the same
way: `PinnedUpload` fills one pinned buffer on the host (`presto_common.noise.fill_draws`) and
copies it with one asynchronous copy, where `torch.stack(...).to(device)` per draw used a parallel
CPU kernel and four pageable copies. The two-H200 round timed that phase at a batch-8 request's
13 ms alone and 290 ms (p50) beside a second GPU's process, and put the batch-1 tail there (p50 2.3
ms, p90 23 ms), while the chain on the GPU stayed within 2% (`scripts/phase_probe.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from presto_common.errors import InputError


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
        copy_to_pinned(t, buffer)
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


class PinnedUpload:
    """One pinned host buffer of a fixed shape for uploads to one CUDA device.

    `upload(fill)` waits until the previous upload out of the buffer has run, lets `fill` write the
    buffer, and returns a new device tensor of its values, copied asynchronously on the device's
    current stream (work queued after it on that stream sees the values).
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        if device.type != "cuda":
            raise InputError(
                f"PinnedUpload(device={device}): it uploads to a CUDA device; on the CPU use the "
                f"tensor itself (no staging)"
            )
        self.device = device
        self._buffer = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        self._copied: torch.cuda.Event | None = None

    def upload(self, fill: Callable[[Tensor], object]) -> Tensor:
        """fill(buffer) writes the host buffer; -> its values on the device, same shape."""
        if self._copied is not None:
            self._copied.synchronize()  # the last copy out of the buffer has read it
        fill(self._buffer)
        out = self._buffer.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record(torch.cuda.current_stream(self.device))
        return out


def copy_to_pinned(t: Tensor, out: Tensor) -> None:
    """t (CUDA, any float dtype) -> out, a page-locked float32 host tensor of t's shape, in one
    asynchronous copy (converted to float32 on the device first); complete when this returns.

    `Pipeline.generate_takes(..., pinned=True)` copies each chunk's audio straight into the
    request's own pinned array this way, without `HostStaging`'s buffer and the host copy out of it
    (90 MiB from pinned memory into a fresh array took 20-21 ms on the two-H200 machine; the
    copy into reused pinned memory 1.72 ms)."""
    if tuple(t.shape) != tuple(out.shape) or out.dtype != torch.float32 or not out.is_pinned():
        raise InputError(
            f"copy_to_pinned: out is {tuple(out.shape)} {out.dtype} "
            f"(pinned: {out.is_pinned()}); expected a pinned float32 tensor of shape "
            f"{tuple(t.shape)}"
        )
    out.copy_(t.float(), non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
