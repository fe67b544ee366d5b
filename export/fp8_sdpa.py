"""The FP8 DiT's attention in FP8: q, k and v quantized after the rotary embedding, one
`presto::attention_fp8` call (runtime/fp8_attention.py), and its E4M3 output straight into the o
projection's FP8 GEMM. Torch packages only (the Q/DQ ONNX graph keeps its bf16 attention).

For a block whose attention export/quant_torch.py quantized (FP8 GEMMs) and export/attention.py
padded to heads of d' (d' a multiple of 16, as FP8 attention needs), with the calibration's ranges
(calibration/attention_ranges.py) s_x = amax_x / 448:

    q8 = Q8(rot(q) / s_q)    k8 = Q8([rot(k_audio); k_text] / s_k)    v8 = Q8([v_audio; v_text] / s_v)
    o8 = attention_fp8(q8, k8, v8, kv_len, (s_q, s_k, s_v), 1 / s_o, d^-0.5)
    y  = _scaled_mm(o8, W_o8^T) * s_o * s_Wo + b_o

kv_len = T + the row's valid text tokens: the padding is masked by length (cuDNN's padding mask
skips the padded keys), not by the head channel export/attention.py folds it into, so the text
keys carry no bias here. The q heads' channel d still holds the padded GEMM's 1.0 and meets k's
0 there: it adds nothing to a logit, but it is in q's range, so s_q covers at least 1. s_o is the
o GEMM's own input scale: ModelOpt's range of the o projection's input is the attention output's
range (tests/calibration/test_attention_ranges.py), so o8 needs no second quantization.

Built by `export.build --quantization fp8 --fp8-attention` (torch packages; the package's metadata
names the op, and runtime.torch_engine registers it before loading). Status: parity on the CPU,
where the op runs its fp32 reference (tests/export/test_fp8_sdpa.py); on an H200 (dec0952) the
budget-0 DiT with it, compiled by `scripts/quant_round.py --precisions fp8-sdpa`, ran at 128 takes
1.33x the bf16 DiT with x0 cosine 0.9992 or more against bf16 (README, "Calibrating the DiT"). A
whole `export.build --fp8-attention` folder has not been built or run on a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from export.attention import padded_operands
from export.quant_onnx import FP8_E4M3_MAX
from export.quant_scales import AttentionRanges
from presto_common.errors import ArtifactError, ConfigError
from runtime.fp8_attention import quantize_fp8  # importing it registers presto::attention_fp8


def fp8_attention_forward(
    attn: nn.Module, a: Tensor, text: Tensor, angles: Tensor, key_mask: Tensor
) -> Tensor:
    """A padded FP8 QuantFusedAttention's forward with FP8 attention (module docstring).
    a: (B, T, D) audio, text: (B, S, D), angles: (T, d/2), key_mask: (B, 1, 1, T + S) bool with
    the text padding a suffix. Returns (B, T, D) in a's dtype."""
    H, d_pad = attn.num_heads, attn.padded_head
    d = attn.width // H
    B, T, _ = a.shape
    s_q, s_k, s_v = attn.sdpa_scales.unbind()
    q, k_a, k_t, v = padded_operands(attn, a, text, angles)
    q8 = quantize_fp8(q.float() / s_q)  # (B, H, T, d')
    # k (no bias) in v's memory, (B, T + S, H, d'): the op's cuDNN graph describes k and v with one
    # set of strides and copies one of them when they differ (at dec0952, one 0.70 ms copy per
    # block at 128 takes on the H200). Inductor writes k8 in this layout from the cat directly.
    k = torch.cat([k_a.transpose(1, 2), k_t.transpose(1, 2)], dim=1).transpose(1, 2)
    k8 = quantize_fp8(k.float() / s_k)  # (B, H, T + S, d')
    v8 = quantize_fp8(v.float() / s_v)
    kv_len = (T + key_mask[:, 0, 0, T:].sum(-1)).to(torch.int32)  # (B,)
    o8 = torch.ops.presto.attention_fp8(
        q8, k8, v8, kv_len, attn.sdpa_scales, 1.0 / attn.o.input_scale, d**-0.5
    )  # (B, H, T, d') E4M3 in (B, T, H, d') memory
    rows = o8.transpose(1, 2).reshape(B * T, H * d_pad)  # a view: no copy
    return attn.o.scaled_gemm(rows, attn.o.input_scale, a.dtype).reshape(B, T, -1)


def enable_fp8_attention(dit: nn.Module, ranges: dict[str, AttentionRanges]) -> int:
    """Give every padded FP8 attention of `dit` that `ranges` (one budget's, by "blocks.{i}.attn")
    covers its FP8 attention scales, so that it runs `fp8_attention_forward`; returns how many.
    ConfigError for an attention that is not padded FP8, ArtifactError for one without ranges."""
    from export.quant_torch import FP8Linear, QuantFusedAttention, input_scale  # imports us

    enabled = 0
    for i, block in enumerate(dit.blocks):
        attn, name = block.attn, f"blocks.{i}.attn"
        if not isinstance(attn, QuantFusedAttention):
            continue  # a block the budget drops keeps its unquantized attention
        if not (isinstance(attn.o, FP8Linear) and attn.padded_head % 16 == 0 and attn.padded_head):
            raise ConfigError(
                f"{name} is not an FP8 attention padded to a multiple of 16 (padded_head "
                f"{attn.padded_head}, o {type(attn.o).__name__}); quantize it for fp8 and pad it "
                "first (export.quant_torch.quantized_torch_model does)"
            )
        if name not in ranges:
            raise ArtifactError(
                f"the calibration has no attention ranges for {name} ({len(ranges)} blocks "
                "have them); calibrate again with this version (python -m calibration.calibrate)"
            )
        r = ranges[name]
        amaxes = (torch.clamp(r.q_amax, min=1.0), r.k_amax, r.v_amax)
        scales = torch.stack([input_scale(x, FP8_E4M3_MAX) for x in amaxes])
        attn.register_buffer("sdpa_scales", scales.to(attn.o.input_scale.device))  # s_q, s_k, s_v
        enabled += 1
    return enabled
