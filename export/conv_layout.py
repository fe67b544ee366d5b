"""Run 1-D convolutions as 2-D ones with height 1, so Inductor can keep them channels-last.

cuDNN's fast bf16 convolution kernels on Hopper take NHWC. A Conv1d on (B, C, T) is NCHW to cuDNN,
so every call transposes its input to NHWC and its output back: in the H100 profile of the
AOTInductor VAE decoder those transposes took 32% of the GPU time, and 44% in the mono-to-stereo
model (docs/measurements.md). Inductor's layout optimisation makes activations channels-last,
which removes the transposes, but only for 2-D convolutions. `conv1d_as_conv2d` swaps every Conv1d
of a module for `Conv1dAs2d`, which computes the same convolution through conv2d on (B, C, 1, T);
the squeeze and unsqueeze are views. The swap is undone on exit, so the ONNX export of the same
model is unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn

# Inductor settings that go with the swap: channels-last for every 2-D convolution of the graph.
CONV2D_INDUCTOR_OPTIONS = {"layout_optimization": True, "force_layout_optimization": True}


class Conv1dAs2d(nn.Module):
    """`conv` (an nn.Conv1d, zero padding) computed by conv2d with a height-1 kernel."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, got {conv.padding_mode!r}: {conv}")
        self.conv = conv

    @property
    def weight(self) -> Tensor:  # callers that read the conv's dtype or shape keep working
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, T) -> (B, C_out, T'), as self.conv(x)."""
        c = self.conv
        padding = c.padding if isinstance(c.padding, str) else (0, c.padding[0])
        y = F.conv2d(
            x.unsqueeze(2),
            c.weight.unsqueeze(2),
            c.bias,
            stride=(1, c.stride[0]),
            padding=padding,
            dilation=(1, c.dilation[0]),
            groups=c.groups,
        )
        return y.squeeze(2)


@contextmanager
def conv1d_as_conv2d(module: nn.Module) -> Iterator[int]:
    """Within the block, every nn.Conv1d under `module` runs as Conv1dAs2d; yields how many."""
    swapped: list[tuple[nn.Module, str, nn.Conv1d]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv1d:
                setattr(parent, name, Conv1dAs2d(child))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
