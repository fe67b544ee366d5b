"""Quantized DiT graphs: QuantizeLinear/DequantizeLinear (Q/DQ) pairs around the DiT's GEMMs.

TensorRT builds INT8/FP8 kernels from explicit Q/DQ in the ONNX graph. Each quantized Linear
y = x W^T + b becomes

    y = DQ(Q(x * smooth)) DQ(Q(W / smooth))^T + b

    int8  x: symmetric per tensor, scale = input_amax / 127; W: per output channel,
          scale = weight_amax / 127 (N,); `smooth` is the SmoothQuant factor (K,), applied as one
          Mul on the activation and folded into the stored weight.
    fp8   E4M3, per tensor for x and W, scale = amax / 448; no smoothing.

Quantized: the token-wise GEMMs of every block, attention q, k, v, o and feed-forward w1, w3, w2
(QUANTIZED). The rest stays fp32 as in the fp32 graph: norms, the preconditioning, rotary angles,
attention's QK^T, softmax and PV (TensorRT's FP8 attention needs a head width divisible by 16;
the paper's is 72), and the small Linears of the conditioning path (noise, BPM and budget
embeddings, adaLN), the text projection and the first and last projections (proj_in, proj_out),
which together are under 0.1% of the DiT's FLOPs at paper scale and sit where errors matter most.

The q, k, v and w1, w3 projections stay separate (export/fuse.py fuses them in the fp32 graph):
SmoothQuant gives each its own `smooth`, and q sees audio tokens only while k and v see
[audio; text], so they do not share an input scale. Fusing them needs a shared smoothing.

The fake quantization is one custom op, `presto_calibration::fake_quant`, computed exactly in eager
PyTorch and translated to QuantizeLinear + DequantizeLinear by torch.onnx's dynamo exporter. Opset 19
is needed for the float8e4m3fn zero point (QuantizeLinear-19).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calibration.scales import PRECISIONS, Calibration, LayerScales
from export.onnx_export import PROTOBUF_LIMIT_BYTES, TREESPEC_WARNING, parameter_bytes
from export.spec import ExportSpec, dit_spec
from presto_common.errors import ArtifactError, ConfigError, EngineBuildError
from presto_ref.dit import DiT, blocks_for_budget
from presto_ref.pipeline import Presto

QUANTIZED = re.compile(r"blocks\.\d+\.(attn\.[qkvo]|ffn\.w[123])")
INT8_MAX = 127.0  # symmetric int8: scale = amax / 127, zero point 0 (TensorRT's convention)
FP8_E4M3_MAX = 448.0  # largest finite float8 E4M3 value (OCP FP8 spec)
# A floor under amax: an all-zero calibration range would give scale 0 and x / 0.
MIN_AMAX = 1e-12
OPSET = 19  # QuantizeLinear-19 is the first with float8 types; int8 graphs use it too


# --- the fake-quantization op ---------------------------------------------------------------------


@torch.library.custom_op("presto_calibration::fake_quant", mutates_args=())
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


class QDQLinear(nn.Module):
    """y = DQ(Q(x * smooth)) DQ(Q(W / smooth))^T + b for x: (..., K) -> y: (..., N)."""

    def __init__(self, linear: nn.Linear, scales: LayerScales, precision: str) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"precision {precision!r} is unknown; choose one of {PRECISIONS}")
        if precision == "int8":
            qmax, zp_dtype = INT8_MAX, torch.int8
        else:
            qmax, zp_dtype = FP8_E4M3_MAX, torch.float8_e4m3fn
        weight = linear.weight.detach().float()
        smooth = scales.smooth if precision == "int8" else None
        if smooth is not None:
            weight = weight / smooth[None, :]  # (N, K)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = linear.bias
        self.register_buffer("smooth", None if smooth is None else smooth.float().clone())
        input_scale = scales.input_amax.float().clamp(min=MIN_AMAX) / qmax
        weight_scale = scales.weight_amax.float().clamp(min=MIN_AMAX) / qmax
        self.register_buffer("input_scale", input_scale.reshape(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=zp_dtype))
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_zero_point", torch.zeros(weight_scale.shape, dtype=zp_dtype))

    def forward(self, x: Tensor) -> Tensor:
        if self.smooth is not None:
            x = x * self.smooth  # (..., K)
        x = torch.ops.presto_calibration.fake_quant(x, self.input_scale, self.input_zero_point, 0)
        w = torch.ops.presto_calibration.fake_quant(
            self.weight, self.weight_scale, self.weight_zero_point, 0
        )  # (N, K), per output channel for int8
        return F.linear(x, w, self.bias)


def quantize_dit(
    dit: DiT, budget: int, layers: dict[str, LayerScales], precision: str
) -> list[str]:
    """Swap the QUANTIZED Linears of the blocks that `budget` runs for QDQLinear, in place.

    Returns the swapped layer names. ArtifactError if one of them has no scales (a calibration of
    another model or budget).
    """
    running = {f"blocks.{i}." for i in blocks_for_budget(dit.cfg.num_blocks, budget)}
    names = [
        name
        for name, module in dit.named_modules()
        if isinstance(module, nn.Linear)
        and QUANTIZED.fullmatch(name)
        and any(name.startswith(prefix) for prefix in running)
    ]
    missing = [n for n in names if n not in layers]
    if missing:
        raise ArtifactError(
            f"the calibration has no scales for {len(missing)} layers of budget {budget} "
            f"(e.g. {missing[0]}); calibrate this model again"
        )
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = dit.get_submodule(parent_name)
        setattr(parent, child, QDQLinear(getattr(parent, child), layers[name], precision))
    return names


# --- export ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QDQExport:
    path: Path
    spec: ExportSpec  # the DiT spec of export/, precision "int8" or "fp8", module quantized
    quantized: tuple[str, ...]  # the QDQLinear layers


def quantized_dit_spec(
    model: Presto, budget: int, calibration: Calibration, batch: int = 1, frames: int | None = None
) -> tuple[ExportSpec, list[str]]:
    """export/'s DiT spec (same input and output names and shapes as the fp32 graph) around a
    quantized copy of `model`'s DiT; `model` is left unchanged."""
    if calibration.config_hash != model.config.config_hash():
        raise ArtifactError(
            f"the calibration is of config {calibration.config_hash[:12]}, the model is "
            f"{model.config.name} ({model.config.config_hash()[:12]}); calibrate this model"
        )
    clone = Presto(model.config)
    clone.load_state_dict(model.state_dict())
    clone = clone.float().eval()
    names = quantize_dit(clone.dit, budget, calibration.layers(budget), calibration.precision)
    spec = dit_spec(clone, "fp32", batch, frames or model.config.max_frames, budget)
    return dataclasses.replace(spec, precision=calibration.precision), names


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
    import onnx

    spec, names = quantized_dit_spec(model, budget, calibration, batch, frames)
    path = Path(path)
    external = parameter_bytes(spec.module) > PROTOBUF_LIMIT_BYTES  # paper scale: 2.7 GB fp32
    tmp_dir = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        raw = tmp_dir / path.name
        with (
            torch.no_grad(),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", TREESPEC_WARNING, FutureWarning)
            try:
                torch.onnx.export(
                    spec.module.eval(),
                    spec.sample_inputs(),
                    str(raw),
                    dynamo=True,
                    opset_version=OPSET,
                    input_names=[t.name for t in spec.inputs],
                    output_names=[t.name for t in spec.outputs],
                    external_data=external,
                    optimize=True,
                    custom_translation_table={
                        torch.ops.presto_calibration.fake_quant.default: fake_quant_onnx
                    },
                )
            except Exception as err:  # the exporter raises many types; keep the cause chained
                raise EngineBuildError(f"ONNX export of {spec.name} failed: {err}") from err
        onnx.checker.check_model(str(raw))
        # The graph last, so a present .onnx always has its external data (<name>.onnx.data).
        for data in tmp_dir.glob("*.data"):
            data.replace(path.with_name(data.name))
        raw.replace(path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return QDQExport(path, spec, tuple(names))
