"""export/attention.py: attention with padded heads and no mask equals the masked one (CPU).

Run: python -m pytest tests/export/test_attention.py

Padded against unpadded, float and quantized (FP8Linear, Int8Linear), one attention and the whole
tiny DiT (head 16 -> 32), and the layout the padding writes. The scales of the quantized cases are
made up (ranges of 3 per input channel): both sides read the same ones, so they need no calibration.
"""

from __future__ import annotations

import copy
import doctest

import pytest
import torch

import export.attention
from export.attention import (
    MASKED_LOGIT,
    mask_free_attention,
    pad_attention,
    pad_attention_heads,
    padded_head_width,
)
from export.fuse import FusedAttention
from export.quant_onnx import BLOCK_LINEARS, QDQFusedAttention, fused_scales, quantize_dit
from export.quant_scales import Calibration, LayerScales
from export.quant_torch import (
    FP8Linear,
    Int8Linear,
    QuantFusedAttention,
    quantize_dit_torch,
    quantized_torch_model,
)
from export.spec import dit_spec, export_model, graph_for
from presto_common.errors import ConfigError
from presto_common.names import QUANTIZATIONS
from presto_ref.checkpoint import random_model
from presto_ref.dit import Attention
from presto_ref.layers import rotary_angles

# Text keys valid per batch row: some padded, none valid, all valid.
VALID_TEXT = (5, 0, 16)
INPUT_RANGE = 3.0  # the made-up calibrated range of every input channel


def attention_inputs(width: int, num_heads: int, T: int = 37, S: int = 16, seed: int = 0):
    """a (B, T, D), text (B, S, D), angles (T, d/2), key_mask (B, 1, 1, T + S): VALID_TEXT rows."""
    g = torch.Generator().manual_seed(seed)
    B = len(VALID_TEXT)
    a, text = torch.randn(B, T, width, generator=g), torch.randn(B, S, width, generator=g)
    angles = rotary_angles(T, width // num_heads, 10_000.0, torch.device("cpu"))
    key_mask = torch.ones(B, 1, 1, T + S, dtype=torch.bool)
    for b, n in enumerate(VALID_TEXT):
        key_mask[b, ..., T + n :] = False
    return a, text, angles, key_mask


def fused_attention(width: int = 144, num_heads: int = 2, seed: int = 0) -> FusedAttention:
    """A FusedAttention of random weights (head 72 by default, the paper's)."""
    torch.manual_seed(seed)
    return FusedAttention(Attention(width, num_heads)).eval()


def padded(attn: torch.nn.Module) -> torch.nn.Module:
    """A padded deep copy of a (Quant)FusedAttention."""
    free = copy.deepcopy(attn)
    assert pad_attention(free)
    return free


def made_up_scales(model, precision: str) -> dict[str, LayerScales]:
    """LayerScales of every block Linear of presto_ref's (unfused) DiT, INPUT_RANGE per channel."""
    out = {}
    for i, block in enumerate(model.dit.blocks):
        for name in BLOCK_LINEARS:
            w = block.get_submodule(name).weight.detach().float()
            a = torch.full((w.shape[1],), INPUT_RANGE)
            one = LayerScales(input_amax=a.amax(), weight_amax=w.abs().amax(), input_channel_amax=a)
            out[f"blocks.{i}.{name}"] = fused_scales([one], w, precision)
    return out


def dit_inputs(model, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A tiny-DiT call of 3 rows: 5 valid text tokens, none, all S."""
    x, sigma, text, _, bpm = dit_spec(model, "fp32", 3, 24, 0).sample_inputs(seed)
    mask = torch.zeros(3, text.shape[1], dtype=torch.bool)
    mask[0, :5], mask[2] = True, True
    return x, sigma, text, mask, bpm


# --- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "num_heads"), [(144, 2), (64, 4), (128, 2)])
def test_padded_attention_equals_the_masked_one_in_fp32(width, num_heads):
    # Head widths 72, 16, 64 (8, 16, 16 pad channels). Valid keys' logits are the same dot products
    # plus exact zeros and padded keys get weight exactly 0, so only the summation order inside the
    # GEMMs and SDPA at another width may change: float rounding, about 1e-7 of the O(0.1-1)
    # outputs (measured max abs diff 0 on this CPU). A padded key leaking in, or a wrong scale,
    # moves outputs by O(0.1).
    attn = fused_attention(width, num_heads)
    inputs = attention_inputs(width, num_heads)
    with torch.no_grad():
        want = attn(*inputs)
        got = padded(attn)(*inputs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_padded_keys_get_no_weight():
    # The padded text tokens replaced by others 30x as large: any weight on them would show. (Not
    # 1e4: their logits s q.k - 5000 must stay ~100 below the largest valid one for exp to reach
    # 0, which holds for logits of O(10^3) or less; these are O(10^2).)
    attn = padded(fused_attention())
    a, text, angles, key_mask = attention_inputs(144, 2)
    loud = text.clone()
    pad = ~key_mask[:, 0, 0, a.shape[1] :]  # (B, S)
    loud[pad] = 30 * torch.randn(int(pad.sum()), text.shape[-1])
    with torch.no_grad():
        assert torch.equal(attn(a, loud, angles, key_mask), attn(a, text, angles, key_mask))
    assert torch.exp(torch.tensor(MASKED_LOGIT)) == 0


@pytest.mark.parametrize("budget", [0, 2])
def test_mask_free_dit_equals_the_masked_dit_in_fp32(budget):
    # The tiny preset: head 16 -> 32, 4 blocks. Same argument as above; the whole DiT measured
    # max abs diff 0 on this CPU. 1e-5 of the O(1) x0 allows another blocking; a leak is O(0.1).
    model = random_model("tiny", 0).eval()
    masked = export_model(model, "fp32", mask_free=False)
    free = export_model(model, "fp32")
    assert all(b.attn.padded_head == 32 for b in free.dit.blocks)
    assert all(b.attn.padded_head == 0 for b in masked.dit.blocks)
    inputs = dit_inputs(model)
    with torch.no_grad():
        want = graph_for(masked, "dit", budget)(*inputs)
        got = graph_for(free, "dit", budget)(*inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def quantized_first_attention(model, precision: str) -> QuantFusedAttention:
    """Block 0's attention of `model`'s unpadded export copy, quantized with made-up scales."""
    dit = export_model(model, "fp32", mask_free=False).dit
    quantize_dit_torch(dit, 0, made_up_scales(model, precision), precision)
    attn = dit.blocks[0].attn
    assert isinstance(attn, QuantFusedAttention)
    return attn


@pytest.mark.parametrize("precision", QUANTIZATIONS)
def test_quantized_attention_padded_equals_unpadded(precision):
    # Padding adds exact zeros to the 8-bit weights (and scale / smoothing 1.0 for them), so each
    # GEMM output is the same sum; the attention between them is fp32 at another head width, whose
    # rounding (1e-7) could move an activation across a step of o's 8-bit input grid (1/127 of 3
    # for int8), once in a while. Measured max abs diff 0 on this CPU; 1e-4 of the O(1) outputs
    # allows a few such flips elsewhere and still catches a leak or a wrong row (O(0.1)).
    model = random_model("tiny", 0).eval()
    attn = quantized_first_attention(model, precision)
    inputs = attention_inputs(model.config.dit.width, model.config.dit.num_heads)
    with torch.no_grad():
        want = attn(*inputs)
        got = padded(attn)(*inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("precision", QUANTIZATIONS)
def test_quantized_torch_model_pads_after_quantizing(precision):
    # quantized_torch_model quantizes the unpadded copy and pads it: against the unpadded quantized
    # DiT, the tolerance argument of the test above, through 4 blocks (measured max abs diff 0).
    model = random_model("tiny", 0).eval()
    calibration = Calibration(
        precision, model.config.config_hash(), {0: made_up_scales(model, precision)}
    )
    padded_model, names = quantized_torch_model(model, 0, calibration, "fp32")
    masked = export_model(model, "fp32", mask_free=False)
    assert quantize_dit_torch(masked.dit, 0, calibration.layers(0), precision) == names
    kind = FP8Linear if precision == "fp8" else Int8Linear
    for block in padded_model.dit.blocks:
        assert block.attn.padded_head == 32 and isinstance(block.attn.qkv, kind)
        # its rotary tables (tests/export/test_rotary_tables.py) attached after the cast: fp32
        assert block.attn.rope_cos.dtype == torch.float32
    inputs = dit_inputs(model)
    with torch.no_grad():
        want = graph_for(masked, "dit", 0)(*inputs)
        got = graph_for(padded_model, "dit", 0)(*inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


# --- the layout -----------------------------------------------------------------------------------


def test_qkv_gives_q_a_one_at_channel_d_and_zero_pad_channels():
    attn = fused_attention()  # head 72 -> 80
    H, d, d_pad = 2, 72, padded_head_width(72)
    free = padded(attn)
    assert free.padded_head == d_pad == 80 and free.q_rows == H * d_pad
    assert free.qkv.weight.shape == (3 * H * d_pad, 144) and free.o.weight.shape == (144, H * d_pad)
    a = attention_inputs(144, H)[0]
    with torch.no_grad():
        want = attn.qkv(a).unflatten(-1, (3, H, d))  # (B, T, 3, H, d): [q|k|v], head-major
        got = free.qkv(a).unflatten(-1, (3, H, d_pad))  # (B, T, 3, H, d')
    assert torch.equal(got[..., :d], want)  # same dot products, rows in the same order
    assert (got[:, :, 0, :, d] == 1).all()  # q' = [q, 1, 0 ...]
    assert (got[:, :, 1:, :, d] == 0).all()  # k and v: 0 at channel d (the bias goes in later)
    assert (got[..., d + 1 :] == 0).all()
    weight = free.qkv.weight.unflatten(0, (3, H, d_pad))
    assert (weight[:, :, d:] == 0).all()
    assert (free.o.weight.unflatten(1, (H, d_pad))[..., d:] == 0).all()
    assert torch.equal(free.o.weight.unflatten(1, (H, d_pad))[..., :d].flatten(1), attn.o.weight)


@pytest.mark.parametrize("precision", QUANTIZATIONS)
def test_quantized_layout_pads_with_zeros_and_unit_scales(precision):
    attn = quantized_first_attention(random_model("tiny", 0).eval(), precision)
    free = padded(attn)
    H, d, d_pad, D = 4, 16, 32, 64
    qkv = free.qkv.weight_q.float().unflatten(0, (3, H, d_pad))
    o = free.o.weight_q.float().unflatten(1, (H, d_pad))
    assert free.qkv.weight_q.dtype == attn.qkv.weight_q.dtype and free.qkv.weight_q.is_contiguous()
    assert free.o.weight_q.is_contiguous() and free.o.weight_q.shape == (D, H * d_pad)
    assert torch.equal(qkv[:, :, :d].flatten(0, 2), attn.qkv.weight_q.float())
    assert (qkv[:, :, d:] == 0).all() and (o[..., d:] == 0).all()
    assert torch.equal(o[..., :d].flatten(1), attn.o.weight_q.float())
    assert (free.qkv.in_features, free.qkv.out_features) == (D, 3 * H * d_pad)
    assert (free.o.in_features, free.o.out_features) == (H * d_pad, D)
    bias = free.qkv.bias.unflatten(0, (3, H, d_pad))
    assert free.qkv.bias.dtype == torch.float32 and (bias[0, :, d] == 1).all()
    assert bias.abs().sum() == H
    if precision == "int8":
        scale = free.qkv.weight_scale.unflatten(0, (3, H, d_pad))
        assert (scale[:, :, d:] == 1).all()
        assert torch.equal(scale[:, :, :d].flatten(), attn.qkv.weight_scale)
        smooth = free.o.smooth.unflatten(0, (H, d_pad))
        assert (smooth[:, d:] == 1).all() and torch.equal(smooth[:, :d].flatten(), attn.o.smooth)
    else:
        assert free.qkv.weight_scale.shape == ()


def test_bf16_model_keeps_the_bias_in_bf16():
    # export_model pads before the cast: the bias is cast with the model, 1.0 stays exact.
    free = export_model(random_model("tiny", 0), "bf16")
    bias = free.dit.blocks[0].attn.qkv.bias
    assert bias.dtype == torch.bfloat16 and bias.sum() == 4


# --- idempotence and refusals ---------------------------------------------------------------------


def test_a_second_pass_pads_nothing():
    model = random_model("tiny", 0)
    free = export_model(model, "fp32")
    before = {k: v.clone() for k, v in free.dit.state_dict().items()}
    assert pad_attention_heads(free.dit) == 0
    after = free.dit.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    masked = export_model(model, "fp32", mask_free=False)
    assert pad_attention_heads(masked.dit) == model.config.dit.num_blocks
    assert pad_attention_heads(masked.dit) == 0
    assert pad_attention_heads(model.dit) == 0  # presto_ref's unfused Attention is left alone
    qdq = export_model(model, "fp32", mask_free=False).dit
    quantize_dit(qdq, 0, made_up_scales(model, "int8"), "int8")
    assert pad_attention_heads(qdq) == 0  # the Q/DQ graph's attention stays masked
    assert not any(block.attn.attention.padded_head for block in qdq.blocks)


@pytest.mark.parametrize("kind", [QuantFusedAttention, QDQFusedAttention])
def test_quantizing_a_padded_attention_is_refused(kind):
    model = random_model("tiny", 0)
    attn = export_model(model, "fp32").dit.blocks[0].attn
    q, k, v, o = (made_up_scales(model, "fp8")[f"blocks.0.attn.{n}"] for n in "qkvo")
    with pytest.raises(ConfigError, match="already padded to 32 channels"):
        kind(attn, q, k, v, o, "fp8")


def test_padded_head_width_and_doctests():
    assert [padded_head_width(d) for d in (72, 79, 80, 15, 16, 1)] == [80, 80, 96, 16, 32, 16]
    assert doctest.testmod(export.attention).failed == 0
    assert mask_free_attention.__doc__ and FusedAttention.padded_head == 0
