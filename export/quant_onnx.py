"""Quantized DiT graphs: QuantizeLinear/DequantizeLinear (Q/DQ) pairs around the DiT's GEMMs.

TensorRT builds INT8/FP8 kernels from explicit Q/DQ in the ONNX graph. Each quantized Linear
y = x W^T + b becomes

    y = DQ(Q(x * smooth)) DQ(Q(W / smooth))^T + b

    int8  x: symmetric per tensor, scale = input_amax / 127; W: per output channel,
          scale = weight_amax / 127 (N,); `smooth` is the SmoothQuant factor (K,), applied as one
          Mul on the activation and folded into the stored weight.
    fp8   E4M3, per tensor for x and W, scale = amax / 448; no smoothing.

Quantized: the token-wise GEMMs of every block that the budget runs, in export/fuse.py's fused
form, so the graph has the unquantized graph's GEMMs: attention [q|k|v] (over the audio tokens, and
its [k|v] rows over the text tokens) and o, feed-forward [w1|w3] and w2. The rest stays as in the
unquantized graph at the build's precision (`quantized_dit_model` computes the scales in fp32,
then casts all but the zero points): norms, the preconditioning, rotary angles, attention's QK^T,
softmax and PV (TensorRT's FP8 attention needs a head width divisible by 16; the paper's is 72),
and the small Linears of the conditioning path (noise, BPM and budget embeddings, adaLN), the text
projection and the first and last projections (proj_in, proj_out), which together are under 0.1%
of the DiT's FLOPs at paper scale and sit where errors matter most.

Fused GEMMs need one input scale and, for int8, one smoothing factor per input channel: o and w2
use ModelOpt's as calibrated; [q|k|v] and [w1|w3] get ModelOpt's formula applied to the members'
per-channel input ranges (the calibration records them) and the fused weight (`fused_scales`).

The fake quantization is one custom op, `presto_quant::fake_quant`, computed exactly in eager
PyTorch and translated to QuantizeLinear + DequantizeLinear by torch.onnx's dynamo exporter. Opset 19
is needed for the float8e4m3fn zero point (QuantizeLinear-19).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.fuse import FusedAttention, FusedSwiGLU
from export.onnx_export import export_onnx
from export.quant_scales import SMOOTHQUANT_ALPHA, Calibration, LayerScales
from export.spec import ExportSpec, dit_spec, export_model
from presto_common.errors import ArtifactError, ConfigError
from presto_common.names import QUANTIZATIONS, torch_dtype
from presto_ref.dit import DiT, blocks_for_budget
from presto_ref.pipeline import Presto

INT8_MAX = 127.0  # symmetric int8: scale = amax / 127, zero point 0 (TensorRT's convention)
FP8_E4M3_MAX = 448.0  # largest finite float8 E4M3 value (OCP FP8 spec)
# A floor under amax: an all-zero calibration range would give scale 0 and x / 0.
MIN_AMAX = 1e-12
SMOOTH_RANGE = (1e-4, 1e4)  # ModelOpt's clamp on SmoothQuant factors
SMOOTH_EPS = 2.0**-31  # ModelOpt's floor: channels with a smaller range get factor 1
OPSET = 19  # QuantizeLinear-19 is the first with float8 types; int8 graphs use it too
# The calibrated Linears of a block, as presto_ref's unfused DiT names them, and the fused GEMMs
# of export/fuse.py that quantization replaces.
BLOCK_LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.w1", "ffn.w3", "ffn.w2")
QUANTIZED_GEMMS = ("attn.qkv", "attn.o", "ffn.w13", "ffn.w2")


# --- the fake-quantization op ---------------------------------------------------------------------


@torch.library.custom_op("presto_quant::fake_quant", mutates_args=())
def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
    """DQ(Q(x)) with ONNX semantics, zero point 0: int8 rounds half to even and saturates to
    [-128, 127]; float8 E4M3 (zero_point's dtype) rounds to nearest and saturates to +-448.
    scale: () per tensor or (x.shape[axis],) per channel."""
    shape = [1] * x.dim()
    if scale.dim():
        shape[axis] = -1
    s = scale.reshape(shape).to(x.dtype)
    if zero_point.dtype == torch.float8_e4m3fn:
        q = (x / s).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).to(x.dtype)
    else:
        q = torch.round(x / s).clamp(-INT8_MAX - 1, INT8_MAX)
    return q * s


@fake_quant.register_fake
def _(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
    return torch.empty_like(x)


def fake_quant_onnx(x, scale, zero_point, axis: int):
    """The ONNX form of `fake_quant` (an onnxscript function for torch.onnx's translation table)."""
    from onnxscript import opset19 as op

    q = op.QuantizeLinear(x, scale, zero_point, axis=axis)
    return op.DequantizeLinear(q, scale, zero_point, axis=axis)


# --- the quantized Linear -------------------------------------------------------------------------


class QDQInput(nn.Module):
    """DQ(Q(x * smooth)) for x: (..., K): the activation side of a quantized GEMM, per tensor."""

    def __init__(self, amax: Tensor, smooth: Tensor | None, precision: str) -> None:
        super().__init__()
        qmax, zp_dtype = quant_format(precision)
        self.register_buffer("smooth", None if smooth is None else smooth.float().clone())
        self.register_buffer("scale", amax.float().clamp(min=MIN_AMAX).reshape(()) / qmax)
        self.register_buffer("zero_point", torch.zeros((), dtype=zp_dtype))

    def forward(self, x: Tensor) -> Tensor:
        if self.smooth is not None:
            x = x * self.smooth  # (..., K)
        return torch.ops.presto_quant.fake_quant(x, self.scale, self.zero_point, 0)


class QDQLinear(nn.Module):
    """y = DQ(Q(x * smooth)) DQ(Q(W / smooth))^T + b for x: (..., K) -> y: (..., N)."""

    def __init__(self, linear: nn.Linear, scales: LayerScales, precision: str) -> None:
        super().__init__()
        qmax, zp_dtype = quant_format(precision)
        weight = linear.weight.detach().float()
        smooth = scales.smooth if precision == "int8" else None
        if smooth is not None:
            weight = weight / smooth[None, :]  # (N, K)
        self.input = QDQInput(scales.input_amax, smooth, precision)
        self.smoothed_weight = nn.Parameter(weight, requires_grad=False)  # W / smooth: (N, K)
        self.bias = linear.bias
        weight_scale = scales.weight_amax.float().clamp(min=MIN_AMAX) / qmax
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_zero_point", torch.zeros(weight_scale.shape, dtype=zp_dtype))

    @property
    def weight(self) -> Tensor:
        """DQ(Q(W / smooth)): (N, K), per output channel for int8. Code that multiplies by a
        Linear's `.weight` itself (export/fuse.py's text GEMM) thus gets the quantized weight; its
        input must then be DQ(Q(x * smooth)) too."""
        return torch.ops.presto_quant.fake_quant(
            self.smoothed_weight, self.weight_scale, self.weight_zero_point, 0
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input(x), self.weight, self.bias)


def quant_format(precision: str) -> tuple[float, torch.dtype]:
    """(largest representable magnitude, zero-point dtype) of a precision."""
    if precision == "int8":
        return INT8_MAX, torch.int8
    if precision == "fp8":
        return FP8_E4M3_MAX, torch.float8_e4m3fn
    raise ConfigError(f"precision {precision!r} is unknown; choose one of {QUANTIZATIONS}")


# --- the fused projections of export/fuse.py, quantized -------------------------------------------


def shared_smoothing(channel_amax: Tensor, weight: Tensor) -> Tensor:
    """SmoothQuant factor s: (K,) for one input read by a fused weight (N, K), ModelOpt's formula:
    s_j = max_i |W_ij|^(1 - alpha) / max|X_j|^alpha, clamped to [1e-4, 1e4], 1 where X_j is 0."""
    a = channel_amax.float()
    s = weight.abs().amax(dim=0).pow(1 - SMOOTHQUANT_ALPHA) / a.pow(SMOOTHQUANT_ALPHA)
    s = torch.where(a > SMOOTH_EPS, s, torch.ones_like(s))
    return s.clamp(*SMOOTH_RANGE)


def fused_scales(members: list[LayerScales], weight: Tensor, precision: str) -> LayerScales:
    """Scales for one GEMM that fuses Linears reading the same input, weight = [W_a; W_b; ...]:
    (N, K) unsmoothed. fp8: the largest of the members' amaxes; int8: a shared smoothing from the
    members' per-channel input ranges (whose maximum becomes input_channel_amax)."""
    if precision == "fp8":
        amax = torch.stack([m.input_amax for m in members]).amax()
        weight_amax = torch.stack([m.weight_amax for m in members]).amax()
        return LayerScales(input_amax=amax, weight_amax=weight_amax)
    channel_amax = torch.stack([m.input_channel_amax for m in members]).amax(dim=0)  # (K,)
    smooth = shared_smoothing(channel_amax, weight)
    return LayerScales(
        input_amax=(channel_amax * smooth).amax(),
        weight_amax=(weight / smooth[None, :]).abs().amax(dim=1),  # (N,)
        smooth=smooth,
        input_channel_amax=channel_amax,
    )


def check_unpadded(attn: FusedAttention) -> None:
    """ConfigError if export/attention.py has padded `attn`'s heads: calibration scales are of the
    unpadded weights, so both quantized attentions (Q/DQ and real-kernel) take an unpadded one."""
    if attn.padded_head:
        raise ConfigError(
            f"this attention's heads are already padded to {attn.padded_head} channels "
            "(export/attention.py); quantize an export copy made with mask_free=False, then "
            "pad it (quantized_torch_model does)"
        )


def attention_scales(
    q: LayerScales, k: LayerScales, v: LayerScales, weight: Tensor, precision: str
) -> tuple[LayerScales, Tensor]:
    """The fused [q|k|v] GEMM's scales (weight (3D, D), input range that of the audio tokens) and
    the input range () of the text tokens, which read its [k|v] rows with the same smoothing.

    q reads the audio tokens alone, k and v read [audio; text]: q's range is the audio's and k's
    bounds the text. Both the Q/DQ graph and export/quant_torch.py quantize attention by this."""
    qkv = fused_scales([q, k, v], weight.detach().float().cpu(), precision)  # (3D, D)
    if precision == "int8":
        audio_amax = (q.input_channel_amax * qkv.smooth).amax()
        text_amax = (k.input_channel_amax * qkv.smooth).amax()
    else:
        audio_amax, text_amax = q.input_amax, k.input_amax
    return dataclasses.replace(qkv, input_amax=audio_amax), text_amax


class QDQFusedAttention(nn.Module):
    """export.fuse.FusedAttention with both of its GEMMs quantized, run by its own forward (so the
    attention itself stays whatever export/ makes it): [q|k|v] over the audio tokens and the [k|v]
    rows over the text tokens share one smoothed, quantized weight (3D, D); the audio and the text
    tokens each have their own input scale."""

    def __init__(
        self,
        attn: FusedAttention,
        q: LayerScales,
        k: LayerScales,
        v: LayerScales,
        o: LayerScales,
        precision: str,
    ) -> None:
        """Takes over `attn` (its qkv and o are replaced in place)."""
        super().__init__()
        check_unpadded(attn)
        qkv, text_amax = attention_scales(q, k, v, attn.qkv.weight, precision)
        attn.qkv = QDQLinear(attn.qkv, qkv, precision)
        attn.o = QDQLinear(attn.o, o, precision)
        self.attention = attn
        self.text_input = QDQInput(text_amax, qkv.smooth, precision)

    def forward(self, a: Tensor, text: Tensor, angles: Tensor, key_mask: Tensor) -> Tensor:
        """a: (B, T, D) audio, text: (B, S, D), angles: (T, d/2), key_mask: (B, 1, 1, T + S) bool.

        FusedAttention multiplies the text by `qkv.weight[D:]`, which QDQLinear returns as the
        quantized smoothed weight, so the text goes in as DQ(Q(text * smooth)).
        """
        return self.attention(a, self.text_input(text), angles, key_mask)


def quantize_dit(
    dit: DiT, budget: int, layers: dict[str, LayerScales], precision: str
) -> list[str]:
    """Quantize the GEMMs of the blocks that `budget` runs, in place, in a DiT whose projections
    export/fuse.py has fused: attention [q|k|v] and o, feed-forward [w1|w3] and w2.

    `layers` are the calibration's scales, named as in presto_ref's unfused DiT. Returns the
    quantized layers' names (fused names). ArtifactError if a needed layer has no scales.
    """
    return quantize_blocks(dit, budget, layers, precision, QDQFusedAttention, QDQLinear)


def quantize_blocks(
    dit: DiT,
    budget: int,
    layers: dict[str, LayerScales],
    precision: str,
    attention: Callable[..., nn.Module],
    linear: Callable[[nn.Linear, LayerScales, str], nn.Module],
) -> list[str]:
    """quantize_dit's loop with the modules as arguments, so the Q/DQ graph (QDQFusedAttention,
    QDQLinear) and the torch packages (export/quant_torch.py's real-kernel ones) quantize the same
    GEMMs with the same scales: attention(attn, q, k, v, o, precision) replaces each run block's
    attention, linear(linear, scales, precision) its [w1|w3] and w2. Returns the fused names."""
    quantized = []
    for i in blocks_for_budget(dit.cfg.num_blocks, budget):
        block, p = dit.blocks[i], f"blocks.{i}."
        # exactly FusedAttention: a quantized one (of either kind) is not quantized twice; a
        # padded one is refused by `attention` (check_unpadded)
        assert type(block.attn) is FusedAttention and isinstance(block.ffn, FusedSwiGLU), (
            f"block {i} is not the fused, unquantized block of export.spec.export_model"
        )
        q, k, v, o, w1, w3, w2 = block_scales(layers, budget, i)
        block.attn = attention(block.attn, q, k, v, o, precision)
        w13 = fused_scales([w1, w3], block.ffn.w13.weight.detach().float().cpu(), precision)
        block.ffn.w13 = linear(block.ffn.w13, w13, precision)
        block.ffn.w2 = linear(block.ffn.w2, w2, precision)
        quantized += [p + n for n in QUANTIZED_GEMMS]
    return quantized


def block_scales(layers: dict[str, LayerScales], budget: int, i: int) -> tuple[LayerScales, ...]:
    """The scales of block i's unfused Linears in BLOCK_LINEARS order (q, k, v, o, w1, w3, w2);
    ArtifactError naming a missing one. quantize_dit and export/quant_torch.py both read them."""
    needed = [f"blocks.{i}.{n}" for n in BLOCK_LINEARS]
    missing = [n for n in needed if n not in layers]
    if missing:
        raise ArtifactError(
            f"the calibration has no scales for {len(missing)} layers of budget {budget} "
            f"(e.g. {missing[0]}); calibrate this model again"
        )
    return tuple(layers[n] for n in needed)


# --- export ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QDQExport:
    path: Path
    spec: ExportSpec  # the DiT spec of export/: precision fp32, quantization "int8" or "fp8"
    quantized: tuple[str, ...]  # the QDQLinear layers


def check_calibration(model: Presto, calibration: Calibration) -> None:
    """ArtifactError unless `calibration` was made for `model`'s config."""
    if calibration.config_hash != model.config.config_hash():
        raise ArtifactError(
            f"the calibration is of config {calibration.config_hash[:12]}, the model is "
            f"{model.config.name} ({model.config.config_hash()[:12]}); calibrate this model"
        )


def quantized_dit_model(
    model: Presto, budget: int, calibration: Calibration, precision: str = "fp32"
) -> tuple[Presto, list[str]]:
    """An export copy of `model` (export.spec.export_model) whose DiT has the blocks of `budget`
    quantized, and the quantized layers' names; `model` is left unchanged.

    The scales and smoothed weights are computed in fp32, then everything floating is cast to
    `precision` but the zero points, whose dtype (int8, float8) is the quantized format: a bf16
    copy exports Q/DQ with bf16 scales around bf16 GEMMs, which a strongly typed TensorRT network
    runs in bf16, as it runs the fp32 copy's attention and norms in fp32."""
    check_calibration(model, calibration)
    # A copy with export/'s fused projections, heads unpadded: the Q/DQ graph keeps the key mask.
    clone = export_model(model, "fp32", mask_free=False)
    names = quantize_dit(clone.dit, budget, calibration.layers(budget), calibration.precision)
    if precision != "fp32":
        zero_points = {n: b for n, b in clone.named_buffers() if n.endswith("zero_point")}
        clone = clone.to(torch_dtype(precision))
        for name, value in zero_points.items():
            owner, attr = name.rsplit(".", 1)
            setattr(clone.get_submodule(owner), attr, value)
    return clone, names


def quantized_dit_spec(
    model: Presto, budget: int, calibration: Calibration, batch: int = 1, frames: int | None = None
) -> tuple[ExportSpec, list[str]]:
    """export/'s DiT spec (same input and output names and shapes as the fp32 graph) around a
    quantized copy of `model`'s DiT: precision fp32 (its other operations), quantization the
    calibration's; `model` is left unchanged."""
    clone, names = quantized_dit_model(model, budget, calibration)
    spec = dit_spec(clone, "fp32", batch, frames or model.config.max_frames, budget)
    return dataclasses.replace(spec, quantization=calibration.precision), names


def translation_table() -> dict:
    """torch.onnx's custom_translation_table that turns `fake_quant` into Q/DQ."""
    return {torch.ops.presto_quant.fake_quant.default: fake_quant_onnx}


def count_quantized(module: nn.Module) -> int:
    """The QDQLinear layers of a module (the fused GEMMs quantize_dit replaced)."""
    return sum(isinstance(m, QDQLinear) for m in module.modules())


def quantized_weight_elements(module: nn.Module) -> int:
    """Elements of the quantized weights of a module: 1 byte each once built, not 4."""
    return sum(m.smoothed_weight.numel() for m in module.modules() if isinstance(m, QDQLinear))


def export_quantized_dit(
    model: Presto,
    budget: int,
    calibration: Calibration,
    path: str | Path,
    *,
    batch: int = 1,
    frames: int | None = None,
) -> QDQExport:
    """Write the Q/DQ DiT graph of one budget to `path` (.onnx, opset 19); returns what was written.

    batch: rows of a DiT call; frames: latent frames (default the model's maximum).
    """
    spec, names = quantized_dit_spec(model, budget, calibration, batch, frames)
    export_onnx(spec, Path(path), opset=OPSET, custom_translation_table=translation_table())
    return QDQExport(Path(path), spec, tuple(names))
