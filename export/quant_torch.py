"""Quantized DiT for the PyTorch backend: real FP8 and INT8 GEMMs, where the ONNX graph has Q/DQ.

The maths is the Q/DQ graph's (export/quant_onnx.py): the same scales, the same rounding and the
same saturation, so these layers compute what TensorRT builds from that graph, but with the low-
precision products done by PyTorch's kernels instead of in fp32:

    fp8   y = _scaled_mm(Q8(x), Q8(W)^T) * (s_x * s_W) + b       E4M3, per tensor, s = amax / 448
    int8  y = _int_mm(Q(x * smooth), Q(W / smooth)^T) * s_x * s_W[n] + b
                                                                  s_x = amax / 127 per tensor,
                                                                  s_W = amax / 127 per channel (N,)

Weights are quantized once, at construction, and stored in the low-precision dtype; activations
are quantized in fp32 on the way in (one elementwise kernel that Inductor fuses with whatever
produced them) and the product comes back in the activation dtype (bf16 on CUDA, fp32 on CPU).
torch.export keeps `aten._scaled_mm` and `aten._int_mm` as nodes and AOTInductor calls the ATen
kernels, so `count_quantized_gemms` on the exported graph tells a quantized package from one that
silently runs bf16 GEMMs.

Kernel shape rules (CUDA; the CPU kernels take any shape):
    _scaled_mm   K and N multiples of 16; the second operand column-major (W^T of a row-major W)
    _int_mm      M > 16 (smaller M is padded with zero rows here), K and N multiples of 8
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.attention import attach_rotary_tables, pad_attention_heads
from export.fp8_sdpa import enable_fp8_attention, fp8_attention_forward
from export.fuse import FusedAttention
from export.quant_onnx import (
    FP8_E4M3_MAX,
    INT8_MAX,
    MIN_AMAX,
    attention_scales,
    check_unpadded,
    quantize_blocks,
)
from export.quant_scales import FP8_MIN_CAPABILITY, Calibration, LayerScales
from export.spec import export_model
from presto_common.errors import ArtifactError, ConfigError
from presto_common.names import QUANTIZATIONS, torch_dtype
from presto_ref.dit import DiT
from presto_ref.pipeline import Presto
from runtime.fp8_attention import quantize_fp8

# FP8 products accumulate in the tensor cores' own reduced-precision adder, without cuBLASLt's
# periodic promotion to fp32 ("fast accumulation"): 7-14% faster for the DiT's fused GEMMs at 16
# takes on the H200 (benchmarks.microbench --batch 16: [q|k|v] 0.177 against 0.206 ms, [w1|w3]
# 0.264 against 0.297, w2 0.140 against 0.153), at a fidelity scripts/quant_round.py measures.
# Ignored by the CPU kernel.
FP8_FAST_ACCUM = True
# CUDA kernels' shape rules (cuBLASLt): FP8 needs K and N in multiples of 16, INT8 multiples of 8
# and more than 16 rows.
FP8_ALIGN = 16
INT8_ALIGN = 8
INT8_MIN_ROWS = 17
# How AOTInductor's C++ wrapper calls the ATen fallback of either kernel (CPU or CUDA shim).
PACKAGE_CALL = re.compile(r"aoti_torch_\w+?__(?:scaled_mm|int_mm)(?:_out|_v2)?\(")


# --- the quantized Linears ------------------------------------------------------------------------


class FP8Linear(nn.Module):
    """y = x W^T + b for x: (..., K) -> y: (..., N) with an FP8 E4M3 GEMM, per-tensor scales.

    x is quantized with the calibrated input range (scale input_amax / 448, saturating to +-448),
    W once at construction (scale weight_amax / 448). Output in x's dtype.
    """

    def __init__(self, linear: nn.Linear, scales: LayerScales) -> None:
        super().__init__()
        if scales.weight_amax.dim() != 0:
            raise ConfigError(
                f"FP8Linear takes a per-tensor weight amax, got shape "
                f"{tuple(scales.weight_amax.shape)}; use an fp8 calibration"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Quantized on the CPU in fp32 (whatever the layer's device and dtype), then moved back.
        device, weight = linear.weight.device, linear.weight.detach().float().cpu()  # (N, K)
        w_scale = scales.weight_amax.detach().float().cpu().clamp(min=MIN_AMAX) / FP8_E4M3_MAX
        x_scale = input_scale(scales.input_amax, FP8_E4M3_MAX)
        wq = (weight / w_scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
        # Row-major (N, K), so that wq.t() is the column-major (K, N) operand _scaled_mm wants.
        self.register_buffer("weight_q", wq.contiguous().to(device))
        self.register_buffer("weight_scale", w_scale.to(device))
        self.register_buffer("input_scale", x_scale.to(device))
        self.bias = linear.bias

    def quantize_input(self, x: Tensor, scale: Tensor) -> Tensor:
        """(M, K) -> float8 (M, K): x / scale in fp32, saturated to +-448, rounded to E4M3."""
        return quantize_fp8(x.float() / scale)

    def gemm(self, x: Tensor, scale: Tensor, rows: slice = slice(None)) -> Tensor:
        """x: (..., K) times the rows `rows` of W, input scale `scale`; -> (..., N_rows) in x's
        dtype. FusedAttention's text [k|v] GEMM uses rows [D:] ([H d':] when padded)."""
        lead = x.shape[:-1]
        xq = self.quantize_input(x.reshape(-1, x.shape[-1]), scale)  # (M, K)
        return self.scaled_gemm(xq, scale, x.dtype, rows).reshape(*lead, -1)

    def scaled_gemm(
        self, xq: Tensor, scale: Tensor, dtype: torch.dtype, rows: slice = slice(None)
    ) -> Tensor:
        """xq: (M, K) float8, already quantized with `scale` (e.g. FP8 attention's output) ->
        (M, N_rows) in `dtype`, bias added."""
        wq = self.weight_q[rows]  # (N_rows, K), still row-major: a row slice of a contiguous W
        assert wq.dtype == torch.float8_e4m3fn, f"weight_q is {wq.dtype}: quantize after .to(dtype)"
        if xq.is_cuda:
            check_cuda_fp8(xq.device)
            check_cuda_shape("fp8", wq.shape[1], wq.shape[0])
        y = torch._scaled_mm(
            xq,
            wq.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            out_dtype=dtype,
            use_fast_accum=FP8_FAST_ACCUM,
        )  # (M, N_rows)
        # The bias is added here, not by _scaled_mm: Inductor's CUDA lowering of a _scaled_mm
        # with a bias failed (LoweringException) on the padded attention's [q|k|v] GEMM (H200,
        # torch 2.11), and the add fuses into the kernel that reads y anyway.
        if self.bias is not None:
            y = y + self.bias[rows].to(dtype)
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.gemm(x, self.input_scale)


class Int8Linear(nn.Module):
    """y = x W^T + b for x: (..., K) -> y: (..., N) with an INT8 GEMM (int32 accumulation) and
    SmoothQuant: (x * smooth) per-tensor symmetric int8, W / smooth per output channel.

    The rounding (half to even) and saturation ([-128, 127]) are ONNX QuantizeLinear's, which the
    Q/DQ graph and TensorRT use. Output in x's dtype.
    """

    def __init__(self, linear: nn.Linear, scales: LayerScales) -> None:
        super().__init__()
        if scales.smooth is None or scales.weight_amax.dim() != 1:
            raise ConfigError(
                "Int8Linear takes SmoothQuant factors and a per-channel weight amax (N,); "
                "use an int8 calibration"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Quantized on the CPU in fp32 (whatever the layer's device and dtype), then moved back.
        device, weight = linear.weight.device, linear.weight.detach().float().cpu()  # (N, K)
        smooth = scales.smooth.detach().float().cpu()  # (K,)
        weight = weight / smooth[None, :]  # W / smooth, as in the Q/DQ graph
        w_scale = scales.weight_amax.detach().float().cpu().clamp(min=MIN_AMAX) / INT8_MAX  # (N,)
        x_scale = input_scale(scales.input_amax, INT8_MAX)
        wq = torch.round(weight / w_scale[:, None]).clamp(-INT8_MAX - 1, INT8_MAX).to(torch.int8)
        self.register_buffer("weight_q", wq.contiguous().to(device))  # (N, K) row-major
        self.register_buffer("weight_scale", w_scale.to(device))
        self.register_buffer("input_scale", x_scale.to(device))
        self.register_buffer("smooth", smooth.to(device))
        self.bias = linear.bias

    def quantize_input(self, x: Tensor, scale: Tensor) -> Tensor:
        """(M, K) -> int8 (M, K): round(x * smooth / scale) in fp32, saturated to [-128, 127]."""
        return (
            torch.round(x.float() * self.smooth / scale)
            .clamp(-INT8_MAX - 1, INT8_MAX)
            .to(torch.int8)
        )

    def gemm(self, x: Tensor, scale: Tensor, rows: slice = slice(None)) -> Tensor:
        """x: (..., K) times the rows `rows` of W, input scale `scale`; -> (..., N_rows) in x's
        dtype. FusedAttention's text [k|v] GEMM uses rows [D:] ([H d':] when padded)."""
        lead, dtype = x.shape[:-1], x.dtype
        wq = self.weight_q[rows]  # (N_rows, K)
        assert wq.dtype == torch.int8, f"weight_q is {wq.dtype}: quantize after .to(dtype)"
        if x.is_cuda:
            check_cuda_shape("int8", wq.shape[1], wq.shape[0])
        xq = self.quantize_input(x.reshape(-1, x.shape[-1]), scale)  # (M, K)
        M = xq.shape[0]
        if M < INT8_MIN_ROWS:  # static under torch.export: M is the bucket's B * T
            xq = F.pad(xq, (0, 0, 0, INT8_MIN_ROWS - M))
        acc = torch._int_mm(xq, wq.t())[:M]  # (M, N_rows) int32, exact
        y = acc.float() * (scale * self.weight_scale[rows])  # (M, N_rows) fp32
        if self.bias is not None:
            y = y + self.bias[rows].float()
        return y.to(dtype).reshape(*lead, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.gemm(x, self.input_scale)


QuantLinear = FP8Linear | Int8Linear


def quant_linear(linear: nn.Linear, scales: LayerScales, precision: str) -> QuantLinear:
    """FP8Linear or Int8Linear of `linear` with calibrated `scales`."""
    if precision == "fp8":
        return FP8Linear(linear, scales)
    if precision == "int8":
        return Int8Linear(linear, scales)
    raise ConfigError(f"precision {precision!r} cannot be quantized; choose one of {QUANTIZATIONS}")


def input_scale(amax: Tensor, qmax: float) -> Tensor:
    """Per-tensor scale () of an activation with calibrated range `amax`, on the CPU."""
    return amax.detach().float().cpu().clamp(min=MIN_AMAX).reshape(()) / qmax


def check_cuda_fp8(device: torch.device) -> None:
    """ConfigError on a GPU without FP8 tensor cores (compute capability below 8.9, Ada)."""
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise ConfigError(
            f"fp8 GEMMs need a GPU of compute capability >= 8.9 (Ada, Hopper); "
            f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}: "
            "build int8 or bf16 instead"
        )


def check_cuda_shape(precision: str, k: int, n: int) -> None:
    """ConfigError where the CUDA kernel cannot take a (M, K) x (K, N) product. The GEMMs call it
    on CUDA inputs, while tracing too (the shapes are static), so a build fails before compiling."""
    align = FP8_ALIGN if precision == "fp8" else INT8_ALIGN
    if k % align or n % align:
        kernel = "torch._scaled_mm" if precision == "fp8" else "torch._int_mm"
        raise ConfigError(
            f"a {precision} GEMM of K={k} inputs and N={n} outputs cannot run on CUDA: "
            f"{kernel} needs K and N in multiples of {align}; build this model in bf16 or on CPU"
        )


# --- the fused projections of export/fuse.py ------------------------------------------------------


class QuantFusedAttention(FusedAttention):
    """export.fuse.FusedAttention with quantized GEMMs: [q|k|v] over the audio tokens, its [k|v]
    rows over the text tokens (same stored weight, the text's own input scale), and o. The
    attention itself (rotary, QK^T, softmax, PV) is FusedAttention's, in the activation dtype."""

    def __init__(
        self,
        attn: FusedAttention,
        q: LayerScales,
        k: LayerScales,
        v: LayerScales,
        o: LayerScales,
        precision: str,
    ) -> None:
        nn.Module.__init__(self)  # FusedAttention's own __init__ builds from presto_ref's Attention
        check_unpadded(attn)
        self.num_heads, self.width = attn.num_heads, attn.width
        qkv, text_amax = attention_scales(q, k, v, attn.qkv.weight, precision)  # the Q/DQ graph's
        qmax = INT8_MAX if precision == "int8" else FP8_E4M3_MAX
        self.qkv = quant_linear(attn.qkv, qkv, precision)
        self.o = quant_linear(attn.o, o, precision)
        device = self.qkv.input_scale.device
        self.register_buffer("text_scale", input_scale(text_amax, qmax).to(device))

    def text_kv(self, text: Tensor) -> Tensor:
        """(B, S, D) -> (B, S, 2D) (2 H d' when padded): the [W_k; W_v] rows of the quantized
        [q|k|v] weight."""
        return self.qkv.gemm(text, self.text_scale, slice(self.q_rows, None))

    def forward(self, a: Tensor, text: Tensor, angles: Tensor, key_mask: Tensor) -> Tensor:
        """FusedAttention's forward, or FP8 attention once export/fp8_sdpa.py enabled it."""
        if getattr(self, "sdpa_scales", None) is not None:
            return fp8_attention_forward(self, a, text, angles, key_mask)
        return super().forward(a, text, angles, key_mask)


def quantize_dit_torch(
    dit: DiT, budget: int, layers: dict[str, LayerScales], precision: str
) -> list[str]:
    """Quantize the GEMMs of the blocks that `budget` runs, in place, with real FP8/INT8 kernels,
    in a DiT whose projections export/fuse.py has fused (export.spec.export_model's copy): attention
    [q|k|v] (and its text [k|v] rows) and o, feed-forward [w1|w3] and w2.

    The contract of quantize_dit (export/quant_onnx.py): `layers` are the calibration's scales,
    named as in presto_ref's unfused DiT; returns the quantized layers' names (fused names, which
    are also the new modules' paths). ArtifactError if a needed layer has no scales.
    """
    if precision not in QUANTIZATIONS:
        raise ConfigError(
            f"precision {precision!r} cannot be quantized; choose one of {QUANTIZATIONS}"
        )
    return quantize_blocks(dit, budget, layers, precision, QuantFusedAttention, quant_linear)


# The quantized layers' own tensors: 8-bit weights and fp32 scales, whose dtypes are the format.
QUANTIZED_TENSORS = ("weight_q", "weight_scale", "input_scale", "smooth", "text_scale")


def cast_unquantized(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """module.to(dtype), in place, except the quantized layers' own tensors (QUANTIZED_TENSORS),
    which keep their dtype. Quantize an fp32 copy, then cast it: the scales and 8-bit weights are
    then those export/quant_onnx.py computes from the same fp32 weights, whatever the dtype."""
    kept = {
        name: t
        for name, t in module.named_buffers()
        if name.rsplit(".", 1)[-1] in QUANTIZED_TENSORS
    }
    module.to(dtype)
    for name, t in kept.items():
        owner, attr = name.rsplit(".", 1)
        setattr(module.get_submodule(owner), attr, t)
    return module


def quantized_torch_model(
    model: Presto,
    budget: int,
    calibration: Calibration,
    precision: str,
    fp8_attention: bool = False,
) -> tuple[Presto, list[str]]:
    """An export copy of `model` (export.spec.export_model) whose DiT runs the blocks of `budget`
    with real FP8/INT8 GEMMs, everything else at `precision`, and the quantized layers' names;
    `model` is left unchanged. The counterpart of export.quant_onnx.quantized_dit_model: quantized
    in fp32 (the Q/DQ graph's scales), then its attention heads padded to drop the mask
    (export/attention.py: quantization reads the unpadded layout, so it comes first), then cast
    but for its 8-bit weights and fp32 scales. fp8_attention (an fp8 calibration with attention
    ranges): the quantized blocks' attention in FP8 too (export/fp8_sdpa.py)."""
    if fp8_attention and calibration.precision != "fp8":
        raise ConfigError(
            f"FP8 attention needs an fp8 calibration, got {calibration.precision!r}; calibrate "
            "with --precision fp8"
        )
    clone = export_model(model, "fp32", mask_free=False)
    layers = calibration.layers(budget)
    names = quantize_dit_torch(clone.dit, budget, layers, calibration.precision)
    pad_attention_heads(clone.dit)
    cast_unquantized(clone, torch_dtype(precision))
    if fp8_attention:
        enable_fp8_attention(clone.dit, calibration.attention.get(budget, {}))
    attach_rotary_tables(clone.dit, model.config.max_frames)  # after the cast: fp32 tables
    return clone, names


# --- what an exported graph holds -----------------------------------------------------------------


def count_quantized_gemms(graph: torch.export.ExportedProgram | torch.fx.GraphModule) -> int:
    """Number of `aten._scaled_mm` and `aten._int_mm` calls in an exported program or FX graph
    module: 5 per quantized block of the DiT ([q|k|v], its text [k|v] rows, o, [w1|w3], w2), 0
    in a graph whose GEMMs all run in bf16/fp32."""
    ops = (torch.ops.aten._scaled_mm.default, torch.ops.aten._int_mm.default)
    return sum(node.op == "call_function" and node.target in ops for node in graph.graph.nodes)


def package_quantized_gemms(path: str | Path) -> int:
    """Number of `_scaled_mm` and `_int_mm` calls that an AOTInductor package's wrapper source
    makes (e.g. `aoti_torch_cpu__int_mm_out(`): what the compiled package runs, where
    `count_quantized_gemms` checks the exported graph that went into it. Counts ATen's kernels
    only: with Inductor's max_autotune on CUDA, a GEMM may go to a generated Triton FP8/INT8
    kernel instead, which this does not see."""
    with zipfile.ZipFile(path) as archive:
        sources = [n for n in archive.namelist() if n.endswith("wrapper.cpp")]
        if not sources:
            raise ArtifactError(f"{path} holds no AOTInductor wrapper source (*wrapper.cpp)")
        text = "".join(archive.read(n).decode(errors="replace") for n in sources)
    return len(PACKAGE_CALL.findall(text))
