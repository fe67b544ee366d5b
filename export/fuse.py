"""Export-only fusion of the DiT's projections: fewer, wider GEMMs with the same maths.

At batch 1 and 32 s the DiT's GEMMs have M = 1470 rows: too few tiles to fill an H100, so each
launch runs at a fraction of the matmul rate (benchmarks.microbench; docs/measurements.md: q, k, v
apart at 135 TFLOP/s against 198 for one [q|k|v] GEMM, and w1, w3 apart at 314 against 348 fused):

- attention: one GEMM with W_qkv = [W_q; W_k; W_v] over the audio tokens, and the text tokens'
  keys and values from the [W_k; W_v] rows of the same weight (a view, not a copy);
- SwiGLU: one GEMM with W_13 = [W_1; W_3], split into the gate and the up projection.

Each output element is the same dot product as in the reference, so fp32 results agree to float
rounding (tests/export/test_fuse.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.attention import mask_free_attention
from presto_ref.dit import Attention, DiT, SwiGLU
from presto_ref.layers import apply_rotary


class FusedAttention(nn.Module):
    """presto_ref.dit.Attention with q, k, v in one weight (3D, D).

    padded_head: 0, or d' once export/attention.py's pad_attention_heads has padded the heads to
    width d' (weights (3 H d', D) and (D, H d')), which then runs its forward without a mask.
    """

    padded_head: int = 0

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.num_heads = attn.num_heads
        self.width = attn.q.in_features
        self.qkv = nn.Linear(self.width, 3 * self.width, bias=False)
        self.o = attn.o
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))

    def forward(self, a: Tensor, text: Tensor, angles: Tensor, key_mask: Tensor) -> Tensor:
        """a: (B, T, D) audio, text: (B, S, D), angles: (T, d/2), key_mask: (B, 1, 1, T + S) bool."""
        if self.padded_head:
            return mask_free_attention(self, a, text, angles, key_mask)
        B, T, D = a.shape

        def heads(t: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, d)
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k_a, v_a = self.qkv(a).split(D, dim=-1)  # (B, T, D) each
        k_t, v_t = self.text_kv(text).split(D, dim=-1)  # (B, S, D) each
        q = apply_rotary(heads(q), angles)
        k = torch.cat([apply_rotary(heads(k_a), angles), heads(k_t)], dim=2)  # text unrotated
        v = heads(torch.cat([v_a, v_t], dim=1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, T, d)
        return self.o(out.transpose(1, 2).flatten(2))

    @property
    def q_rows(self) -> int:
        """Rows of W_q in qkv: D, or H d' when padded; the [W_k; W_v] rows follow."""
        return self.num_heads * self.padded_head or self.width

    def text_kv(self, text: Tensor) -> Tensor:
        """[k|v] of the text tokens: (B, S, D) -> (B, S, 2D) (2 H d' when padded), by the
        [W_k; W_v] rows of qkv (a hook, so that export/quant_torch.py can run this GEMM with its
        own kernel). No bias: only q's rows have one."""
        return F.linear(text, self.qkv.weight[self.q_rows :])


class FusedSwiGLU(nn.Module):
    """presto_ref.dit.SwiGLU with w1 and w3 in one weight (2 H, D)."""

    def __init__(self, ffn: SwiGLU) -> None:
        super().__init__()
        self.hidden = ffn.w1.out_features
        self.w13 = nn.Linear(ffn.w1.in_features, 2 * self.hidden, bias=False)
        self.w2 = ffn.w2
        with torch.no_grad():
            self.w13.weight.copy_(torch.cat([ffn.w1.weight, ffn.w3.weight]))

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate) * up)


def fuse_dit_projections(dit: DiT) -> int:
    """Swap every block's attention and feed-forward for the fused forms, in place; returns blocks."""
    for block in dit.blocks:
        block.attn = FusedAttention(block.attn)
        block.ffn = FusedSwiGLU(block.ffn)
    return len(dit.blocks)
