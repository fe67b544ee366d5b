"""Export-only attention without a mask input: the text padding folded into one more head channel,
by padding the projection weights once at export time.

The DiT's keys are the audio tokens (always valid) and the text tokens (padded to S, the padding
masked out). On the H200 a boolean key padding mask makes cuDNN's attention up to about 2x slower at
the paper's shape (1, 16 heads, 1470 queries, 1598 keys; docs/measurements.md). Measured with this
module (bf16, torch 2.11, in a CUDA graph, medians of 200): SDPA 84.5 us with the mask at head 72,
53.7 us without it at head 80; the whole attention, GEMMs included, under torch.compile 145.9 ->
126.3 us. So the exported DiT computes the same attention as one *unmasked* SDPA call over heads of
width d' instead of d:

    q' = [q, 1, 0 ...],   k' = [k, b / s, 0 ...],   v' = [v, 0 ...]      (head d -> d')
    softmax(s q' k'^T) v' = [softmax(s q k^T + b) v, 0 ...]

with s = d^-0.5 passed explicitly (not d'^-0.5), d' the smallest multiple of 16 >= d + 1 (72 -> 80
at paper scale) and the bias b = 0 for a valid key, MASKED_LOGIT for a padded one. A valid key's
logit is the same dot product plus exact zeros; a padded key's is s q k^T - 5000, whose exp (after
softmax subtracts the largest logit) underflows to exactly 0 in fp32 while every logit is within
+-2400, far beyond a trained attention's: weight 0, as with the mask. Every query has valid keys
(the audio tokens), so no row is all masked. b / s = -42426 at d = 72, inside fp16's range for d up
to 171.

An earlier attempt (0453fef, reverted) built q', k' and v' with torch.cat and F.pad at run time;
in a CUDA graph those copies cost more than the mask saved. Here the only new run-time tensors are
small (the bias (B, 1, S, d'); the rotary tables are constants, see `attach_rotary_tables`); the
existing copies run over wider heads. `pad_attention_heads` pads the weights once,

    qkv  W (3 H d, D) -> (3 H d', D): each head's q, k and v rows followed by d' - d zero rows,
         and a bias (3 H d',): 1.0 at channel d of every q head, 0 elsewhere (so q' = [q, 1, 0...])
    o    W (D, H d)   -> (D, H d'):   zero columns at each head's pad channels

and the padded forward (`mask_free_attention`) rotates the pad channels by angle 0 (the identity:
cos 0 = 1, sin 0 = 0 exactly) and adds b / s to the text keys' channel d in the copy that
heads(k_t) already goes through (torch.cat of the audio and text keys), which Inductor fuses.
The quantized attentions of export/quant_torch.py (FP8Linear, Int8Linear) are padded after
quantization, with exact zeros in the 8-bit weights and scale / smoothing 1.0 on the new channels.

Every unquantized graph gets it, ONNX (plain unmasked attention for TensorRT to fuse) and torch
packages alike (export.spec.export_model), and so do the quantized torch packages. The Q/DQ graphs
of export/quant_onnx.py do not: QDQFusedAttention keeps the masked call (its weights are quantized
from the unpadded layout, and this pass skips it). tests/export/test_attention.py checks parity on
the CPU, tests/gpu/test_attention_gpu.py the bf16 kernels on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_common.errors import ConfigError
from presto_ref.layers import rotary_angles, rotary_tables, rotate_pairs

HEAD_MULTIPLE = 16  # padded head widths are multiples of this (FP8 attention and FA3-class kernels)
MASKED_LOGIT = -5000.0  # the logit bias of a padded key: exp(-5000) underflows to 0 in fp32


def padded_head_width(d: int) -> int:
    """d' >= d + 1 (room for the bias channel), rounded up to a multiple of HEAD_MULTIPLE.

    >>> padded_head_width(72), padded_head_width(64), padded_head_width(16)
    (80, 80, 32)
    """
    return -(-(d + 1) // HEAD_MULTIPLE) * HEAD_MULTIPLE


# --- the padded forward ---------------------------------------------------------------------------


def mask_free_attention(
    attn: nn.Module, a: Tensor, text: Tensor, angles: Tensor, key_mask: Tensor
) -> Tensor:
    """export.fuse.FusedAttention's forward for heads padded by `pad_attention_heads`.

    a: (B, T, D) audio, text: (B, S, D), angles: (T, d/2), key_mask: (B, 1, 1, T + S) bool (only
    its text part is read: the audio keys are always valid). Returns (B, T, D).
    """
    d = attn.width // attn.num_heads
    T = a.shape[1]
    scale = d**-0.5  # the unpadded head's: the pad channels add exact zeros to every logit
    q, k_a, k_t, v = padded_operands(attn, a, text, angles)
    valid = key_mask[..., T:].transpose(-1, -2)  # (B, 1, S, 1)
    bias = torch.where(valid, 0.0, MASKED_LOGIT / scale)  # (B, 1, S, 1) fp32
    bias = F.pad(bias, (d, attn.padded_head - d - 1)).to(k_t.dtype)  # (B, 1, S, d'): b / s at d
    k = torch.cat([k_a, k_t + bias], dim=2)  # (B, H, T + S, d')
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, T, d'), pad channels 0
    return attn.o(out.transpose(1, 2).flatten(2))  # o's pad columns are zero


def padded_operands(
    attn: nn.Module, a: Tensor, text: Tensor, angles: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A padded attention's operands, before any masking: q (B, H, T, d') and the audio keys
    (B, H, T, d') rotated (q's channel d is 1), the text keys (B, H, S, d') unrotated, and the
    values (B, H, T + S, d'). Shared by `mask_free_attention` and export/fp8_sdpa.py."""
    H, d_pad = attn.num_heads, attn.padded_head

    def heads(t: Tensor) -> Tensor:  # (B, L, H d') -> (B, H, L, d')
        return t.unflatten(-1, (H, d_pad)).transpose(1, 2)

    q, k_a, v_a = attn.qkv(a).split(H * d_pad, dim=-1)  # (B, T, H d') each
    k_t, v_t = attn.text_kv(text).split(H * d_pad, dim=-1)  # (B, S, H d') each
    cos, sin = rope_of(attn, angles, d_pad - attn.width // H)  # (T, d'/2) each
    q, k_a = rotate_pairs(heads(q), cos, sin), rotate_pairs(heads(k_a), cos, sin)
    return q, k_a, heads(k_t), heads(torch.cat([v_a, v_t], dim=1))


def rope_of(attn: nn.Module, angles: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """cos and sin (T, d'/2) fp32 for a padded attention: the first T rows of its tables
    (`attach_rotary_tables`) if it has them, else `padded_rotary_tables` of angles (T, d/2)."""
    T = angles.shape[0]
    cos, sin = getattr(attn, "rope_cos", None), getattr(attn, "rope_sin", None)
    if cos is None:
        return padded_rotary_tables(angles, pad)
    if cos.shape[0] < T or cos.dtype != torch.float32:
        raise ConfigError(
            f"rotary tables {tuple(cos.shape)} {cos.dtype} cannot serve {T} positions "
            "in fp32: attach them (export.attention.attach_rotary_tables) after the last dtype "
            "cast, for at least the longest bucket's frames"
        )
    return cos[:T], sin[:T]


def padded_rotary_tables(angles: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """cos and sin (T, (d + pad)/2) of angles (T, d/2) followed by pad / 2 zero angles (cos 1,
    sin 0: the pad channels are not rotated)."""
    return rotary_tables(F.pad(angles, (0, pad // 2)))


def attach_rotary_tables(dit: nn.Module, positions: int) -> int:
    """Give every padded attention of `dit` the fp32 cos and sin tables (positions, d'/2) of its
    rotary angles (one pair, shared by all blocks; non-persistent buffers), so that the compiled
    graph reads them instead of recomputing pow, cos and sin per element of q and k in each block
    (Inductor inlines that index arithmetic into every rotary kernel; on the H200 those kernels
    took 92 of 560 ms of the bf16 DiT at 128 takes, docs/measurements.md). Same values as
    rope_of's fallback (both are `padded_rotary_tables`). Call it after the last dtype cast (a
    cast would round the tables); returns how many attentions got them."""
    padded = [b.attn for b in dit.blocks if getattr(b.attn, "padded_head", 0)]
    if not padded:
        return 0
    d_pad, d = padded[0].padded_head, dit.cfg.head_dim
    device = next(dit.parameters()).device
    angles = rotary_angles(positions, d, dit.cfg.rope_theta, device)  # (positions, d/2) fp32
    cos, sin = padded_rotary_tables(angles, d_pad - d)
    for attn in padded:
        attn.register_buffer("rope_cos", cos, persistent=False)
        attn.register_buffer("rope_sin", sin, persistent=False)
    return len(padded)


# --- padding the weights --------------------------------------------------------------------------


def pad_heads(
    t: Tensor, num_heads: int, d: int, d_pad: int, dim: int = 0, fill: float = 0.0
) -> Tensor:
    """t with each head's d entries along `dim` followed by d' - d `fill`s: size G H d -> G H d'
    there (G = 3 for [q|k|v], 1 for o's input). Contiguous, in t's dtype (float8 and int8 too).

    >>> pad_heads(torch.arange(4.0), num_heads=2, d=2, d_pad=3).tolist()
    [0.0, 1.0, 0.0, 2.0, 3.0, 0.0]
    """
    t = t.movedim(dim, 0)
    assert t.shape[0] % (num_heads * d) == 0, f"size {t.shape[0]} is not G * {num_heads} * {d}"
    blocks = t.reshape(-1, d, *t.shape[1:])  # (G H, d, ...)
    out = torch.full((blocks.shape[0], d_pad, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
    out[:, :d] = blocks
    return out.flatten(0, 1).movedim(0, dim).contiguous()


def query_bias(num_heads: int, d: int, d_pad: int, dtype: torch.dtype, device) -> Tensor:
    """The padded [q|k|v] GEMM's bias (3 H d',): 1.0 at channel d of every q head, 0 elsewhere."""
    bias = torch.zeros(3, num_heads, d_pad, dtype=dtype, device=device)
    bias[0, :, d] = 1.0
    return bias.flatten()


def pad_attention_heads(dit: nn.Module) -> int:
    """Pad every block's attention in place (`pad_attention`); returns how many were padded, so a
    second call returns 0. New biases of quantized GEMMs take the dtype of the DiT's weights."""
    dtype = next(p.dtype for p in dit.parameters() if p.is_floating_point())
    return sum(pad_attention(block.attn, dtype) for block in dit.blocks)


def pad_attention(attn: nn.Module, dtype: torch.dtype = torch.float32) -> bool:
    """Pad an export.fuse.FusedAttention (float, or export/quant_torch.py's quantized one with
    FP8Linear / Int8Linear GEMMs) to heads of width d' in place, so that it runs
    `mask_free_attention`; True if it did. An already padded one, presto_ref's unfused Attention
    and the Q/DQ attention of export/quant_onnx.py (which stays masked) are left alone: False.
    dtype: that of a quantized [q|k|v] GEMM's new bias (the activations'; a float one takes its
    weight's)."""
    from export.fuse import FusedAttention  # they import this module
    from export.quant_torch import FP8Linear, Int8Linear

    if not isinstance(attn, FusedAttention) or attn.padded_head:
        return False
    H = attn.num_heads
    d = attn.width // H
    d_pad = padded_head_width(d)
    quantized = (FP8Linear, Int8Linear)
    if type(attn.qkv) is nn.Linear and type(attn.o) is nn.Linear:
        pad_float(attn, H, d, d_pad)
    elif isinstance(attn.qkv, quantized) and isinstance(attn.o, quantized):
        pad_quantized(attn, H, d, d_pad, dtype)
    else:
        return False
    attn.padded_head = d_pad
    return True


def pad_float(attn: nn.Module, H: int, d: int, d_pad: int) -> None:
    """Pad a FusedAttention whose qkv and o are nn.Linear to H heads of d' = d_pad (new Linears,
    same device and dtype)."""
    D = attn.width
    qkv, o = attn.qkv, attn.o
    assert qkv.bias is None, "FusedAttention's [q|k|v] GEMM has no bias of its own"
    kw = {"device": qkv.weight.device, "dtype": qkv.weight.dtype}
    new_qkv = nn.Linear(D, 3 * H * d_pad, bias=True, **kw)
    new_o = nn.Linear(H * d_pad, o.out_features, bias=o.bias is not None, **kw)
    with torch.no_grad():
        new_qkv.weight.copy_(pad_heads(qkv.weight, H, d, d_pad))  # (3 H d', D)
        new_qkv.bias.copy_(query_bias(H, d, d_pad, **kw))
        new_o.weight.copy_(pad_heads(o.weight, H, d, d_pad, dim=1))  # (D, H d')
        if o.bias is not None:
            new_o.bias.copy_(o.bias)
    attn.qkv, attn.o = new_qkv, new_o


def pad_quantized(attn: nn.Module, H: int, d: int, d_pad: int, dtype: torch.dtype) -> None:
    """Pad a QuantFusedAttention's FP8Linear / Int8Linear GEMMs in place to H heads of d' = d_pad:
    zero rows (qkv) and columns (o) in the 8-bit weights, per-channel weight scale 1.0 on qkv's new
    rows and smoothing 1.0 on o's new input channels (int8), and qkv's bias in `dtype` (the
    activations')."""
    from export.quant_torch import Int8Linear

    qkv, o = attn.qkv, attn.o
    assert qkv.bias is None, "QuantFusedAttention's [q|k|v] GEMM has no bias of its own"
    device = qkv.weight_q.device
    qkv.weight_q = pad_heads(qkv.weight_q, H, d, d_pad)  # (3 H d', D), exact zeros
    if isinstance(qkv, Int8Linear):
        qkv.weight_scale = pad_heads(qkv.weight_scale, H, d, d_pad, fill=1.0)  # (3 H d',)
    qkv.bias = nn.Parameter(query_bias(H, d, d_pad, dtype, device), requires_grad=False)
    qkv.out_features = 3 * H * d_pad
    o.weight_q = pad_heads(o.weight_q, H, d, d_pad, dim=1)  # (D, H d')
    if isinstance(o, Int8Linear):
        o.smooth = pad_heads(o.smooth, H, d, d_pad, fill=1.0)  # (H d',)
    o.in_features = H * d_pad
