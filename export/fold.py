"""Export-only rewrites of the reference modules. Each has a parity test in tests/export/test_fold.py.

- Weight norm is a training-time reparametrisation: exporting it would recompute g * v / ||v|| on
  every call (and ONNX Runtime has been seen to disagree on it). Folding writes the effective weight
  into a plain parameter.
- Transposed 1-D convolutions become a Conv1d plus an interleave (`PolyphaseUpsample`): the same
  maths and FLOPs in ops every backend handles in every precision.
- Snake is already plain pointwise ops (Mul, Sin, Pow, Div, Add) and the mel front end is already a
  Conv1d with fixed DFT bases in presto_ref, so neither needs a rewrite.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


def fold_weight_norm(module: nn.Module) -> int:
    """Replace every parametrised weight in `module` (in place) by its current value.

    Returns the number of folded weights. Afterwards no parametrisation remains.
    """
    folded = 0
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
            folded += 1
    remaining = [n for n, m in module.named_modules() if parametrize.is_parametrized(m)]
    assert not remaining, f"parametrisations left after folding: {remaining}"
    return folded


# --- transposed convolutions ---------------------------------------------------------------------


class PolyphaseUpsample(nn.Module):
    """A ConvTranspose1d with kernel 2s and stride s, computed as one Conv1d and an interleave.

    Output sample t, with u = t + padding = q s + r (0 <= r < s), receives exactly two taps:
        y[t] = W[:, :, r]^T x[q] + W[:, :, r + s]^T x[q - 1]
    (x is zero outside 0..L-1). So a Conv1d with kernel 2 over x padded by one on each side, with
    s * C_out output channels (phase r of channel c at c * s + r), gives every phase at every q; the
    interleave puts phase r of step q at u = q s + r, and the crop starts at u = padding.

    Why: TensorRT-RTX 1.7 cannot type bf16 deconvolutions ("Could not infer output types ...
    deconv"), and 1-D transposed convolutions are slow in several backends (notes/tensorrt.md 4.5);
    this form has the same FLOPs and uses only Conv, Reshape, Transpose and Slice.
    """

    def __init__(self, conv: nn.ConvTranspose1d) -> None:
        super().__init__()
        (s,), (k,), (p,) = conv.stride, conv.kernel_size, conv.padding
        if k != 2 * s or conv.dilation != (1,) or conv.groups != 1:
            raise ValueError(
                f"polyphase form needs kernel = 2 * stride, no dilation or groups: {conv}"
            )
        c_in, c_out = conv.in_channels, conv.out_channels
        self.stride, self.padding, self.out_channels = s, p, c_out
        self.output_padding = conv.output_padding[0]
        weight = conv.weight.detach()  # (C_in, C_out, 2s)
        taps = torch.stack([weight[:, :, s:], weight[:, :, :s]], dim=-1)  # (C_in, C_out, s, 2)
        self.conv = nn.Conv1d(c_in, c_out * s, kernel_size=2, padding=1, bias=conv.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(taps.permute(1, 2, 0, 3).reshape(c_out * s, c_in, 2))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach().repeat_interleave(s))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, L) -> (B, C_out, (L - 1) s - 2 padding + 2 s + output_padding)."""
        B, _, L = x.shape
        s = self.stride
        z = self.conv(x)  # (B, C_out * s, L + 1)
        z = (
            z.unflatten(1, (self.out_channels, s)).transpose(2, 3).flatten(2)
        )  # (B, C_out, (L + 1) s)
        length = (L - 1) * s - 2 * self.padding + 2 * s + self.output_padding
        return z[:, :, self.padding : self.padding + length]


def replace_transposed_convs(module: nn.Module) -> int:
    """Swap every ConvTranspose1d (kernel 2 * stride, weight norm folded) for a PolyphaseUpsample."""
    swapped = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ConvTranspose1d):
            setattr(module, name, PolyphaseUpsample(child))
            swapped += 1
        else:
            swapped += replace_transposed_convs(child)
    return swapped
