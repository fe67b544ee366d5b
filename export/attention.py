"""Export-only attention without a mask input: the text padding mask folded into one head channel.

The DiT's keys are the audio tokens (always valid) and the text tokens (padded to S = 128, the
padding masked out). On the H200 a key padding mask doubles cuDNN's attention time at the paper's
shape (1, 16 heads, 1470 queries, 1598 keys): 116 us with the mask, 66 us without it at head 72,
60 us with the head zero-padded to 80 (issue 11's measurements). So the exported DiT computes the
same attention as one *unmasked* call:

    q' = [q, 1, 0 ...],   k' = [k, b / s, 0 ...],   v' = [v, 0 ...]      (head d -> d')
    softmax(s q' k'^T) v' = softmax(s q k^T + b) [v, 0]

with s = 1/sqrt(d) passed explicitly (not 1/sqrt(d')), d' the next multiple of 16 above d (72 -> 80,
the width FP8 attention and FlashAttention-3-class kernels need), and the bias b = 0 for a valid
key and MASKED_LOGIT for a padded one. exp(MASKED_LOGIT) is 0 in every float format, so the
weights on padded keys are exactly 0 as with the mask, and a valid key's logit is the same dot
product plus exact zeros. Every query sees at least one valid key (the audio tokens), so no row is
all masked. The extra channel of k' holds b / s = -42426 at d = 72: inside fp16's range for every
head width up to about 170.

Both the ONNX graphs and the torch packages use it (no torch-only kernel): TensorRT gets plain
MatMul-Softmax-MatMul or an unmasked attention op to fuse, and AOTInductor an unmasked SDPA call.
tests/export/test_attention.py checks it against the masked call on the CPU; tests/gpu checks the
bf16 kernels on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HEAD_MULTIPLE = 16  # padded head widths are multiples of this
MASKED_LOGIT = -5000.0  # the logit bias of a padded key: exp(-5000) underflows to 0 in fp32


def padded_head_width(d: int) -> int:
    """d' >= d + 1 (room for the bias channel), rounded up to a multiple of HEAD_MULTIPLE.

    >>> padded_head_width(72), padded_head_width(64), padded_head_width(8)
    (80, 80, 16)
    """
    return -(-(d + 1) // HEAD_MULTIPLE) * HEAD_MULTIPLE


def attention_without_mask(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + b) v as one unmasked SDPA call (see the module docstring).

    q: (B, H, T, d); k, v: (B, H, L, d); key_mask: (B, 1, 1, L) bool, True where a key is attended.
    Returns (B, H, T, d) in q's dtype.
    """
    B, H, T, d = q.shape
    L = k.shape[2]
    extra = padded_head_width(d) - d - 1
    scale = d**-0.5
    bias = torch.where(key_mask, 0.0, MASKED_LOGIT / scale).to(k.dtype)  # (B, 1, 1, L)
    bias = bias.transpose(-1, -2).expand(B, H, L, 1)
    q2 = torch.cat([q, q.new_ones(B, H, T, 1), q.new_zeros(B, H, T, extra)], dim=-1)
    k2 = torch.cat([k, bias, k.new_zeros(B, H, L, extra)], dim=-1)
    v2 = F.pad(v, (0, extra + 1))
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale)[..., :d]
