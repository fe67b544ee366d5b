"""Engine builds through Polygraphy: TensorRT-RTX AOT builds for sm_80 run on a CPU-only machine.

Run: `python -m pytest tests/export/test_trt_build.py -q`
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export import trt_build
from presto_common.errors import BackendUnavailable, ConfigError, EngineBuildError

HAS_RTX = any(importlib.util.find_spec(m) for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))
HAS_TRT = importlib.util.find_spec("tensorrt") is not None

needs_rtx = pytest.mark.skipif(
    not HAS_RTX,
    reason="TensorRT-RTX wheels not installed: pip install "
    "tensorrt-rtx-cu13-bindings==1.7.1.116 tensorrt-rtx-cu13-libs==1.7.1.116",
)
needs_full_trt = pytest.mark.skipif(
    not HAS_TRT, reason="full TensorRT (tensorrt >= 10) is not importable here"
)


@pytest.fixture
def rtx() -> None:
    """Skip where Polygraphy is already bound to full TensorRT in this process."""
    if trt_build.polygraphy_flavor() == "tensorrt":
        pytest.skip("polygraphy is bound to full TensorRT in this process; run this file alone")


# --- tiny models, in the shapes our DiT and VAE use


class MLPNorm(nn.Module):
    """Linear -> SiLU -> RMS norm with an fp32 statistics island; IO stays fp32."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.proj = nn.Linear(16, 32).to(dtype)
        self.weight = nn.Parameter(torch.rand(32) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.proj(x.to(self.dtype))).float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return h * self.weight


class ConvUp(nn.Module):
    """Dilated Conv1d, then a stride-5 ConvTranspose1d (kernel 10, padding 3, output_padding 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, kernel_size=7, dilation=3, padding=9)
        self.up = nn.ConvTranspose1d(8, 4, kernel_size=10, stride=5, padding=3, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x + self.conv(x))  # (B, 8, T) -> (B, 4, 5 T)


class MaskedAttention(nn.Module):
    """Audio queries over audio + text keys; padded text tokens masked out by a bool key mask."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, q: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q, kv = q.to(self.dtype), kv.to(self.dtype)
        out = F.scaled_dot_product_attention(q, kv, kv, attn_mask=key_mask[:, None, None, :])
        return out.float()


def _export(module: nn.Module, args: tuple, path: Path, names: list[str], opset: int) -> Path:
    # The dynamo exporter handles all four models at static shapes, so no TorchScript fallback.
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=names[: len(args)],
            output_names=names[len(args) :],
        )
    return path


def _onnx_io(path: Path) -> tuple[list, list]:
    graph = onnx.load(str(path)).graph

    def spec(v: onnx.ValueInfoProto) -> tuple:
        t = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        return (v.name, dtype.name, tuple(d.dim_value for d in t.shape.dim))

    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


# Head width 72 as in the paper-scale DiT (1152 / 16); 8 of 10 text tokens are real.
q, kv = torch.randn(1, 2, 6, 72), torch.randn(1, 2, 10, 72)
key_mask = torch.arange(10)[None, :] < 8
ATTN_NAMES = ["q", "kv", "key_mask", "out"]
CASES = {  # name: (module factory, sample inputs, IO names, opset, build_engine kwargs)
    "mlp-fp32": (lambda: MLPNorm(), (torch.randn(2, 5, 16),), ["x", "y"], 18, {}),
    "mlp-bf16": (lambda: MLPNorm(torch.bfloat16), (torch.randn(2, 5, 16),), ["x", "y"], 18, {}),
    "mlp-fp16": (lambda: MLPNorm(torch.float16), (torch.randn(2, 5, 16),), ["x", "y"], 18, {}),
    "conv-up": (ConvUp, (torch.randn(1, 8, 24),), ["latents", "audio"], 18, {}),
    # Opset 18 decomposes SDPA into MatMul-Softmax-MatMul, which TensorRT fuses itself.
    "attn-fp32-opset18": (MaskedAttention, (q, kv, key_mask), ATTN_NAMES, 18, {}),
    # Opset 23 gives one ONNX Attention node: fused kernels exist for bf16/fp16 only.
    "attn-bf16-opset23": (
        lambda: MaskedAttention(torch.bfloat16),
        (q, kv, key_mask),
        ATTN_NAMES,
        23,
        {},
    ),
    "attn-fp32-opset23": (
        MaskedAttention,
        (q, kv, key_mask),
        ATTN_NAMES,
        23,
        {"decomposable_attention": True},
    ),
}


@needs_rtx
@pytest.mark.parametrize("case", list(CASES))
def test_rtx_build_sm80(case: str, tmp_path: Path, rtx: None) -> None:
    make, args, names, opset, kwargs = CASES[case]
    torch.manual_seed(0)
    onnx_path = _export(make(), args, tmp_path / f"{case}.onnx", names, opset)
    engine_path = tmp_path / "engines" / f"{case}.plan"

    build = trt_build.build_engine(onnx_path, engine_path, flavor="rtx", **kwargs)

    assert engine_path.is_file() and engine_path.stat().st_size == build.size_bytes > 0
    assert build.compute_capabilities == ("8.0",) and build.flavor == "rtx"
    assert list(engine_path.parent.iterdir()) == [engine_path], "temporary file left behind"
    onnx_inputs, onnx_outputs = _onnx_io(onnx_path)
    assert list(build.inputs) == onnx_inputs and list(build.outputs) == onnx_outputs
    assert trt_build.network_io(onnx_path, "rtx") == (build.inputs, build.outputs)
    print(f"{case}: built in {build.build_s:.2f} s, {build.size_bytes} bytes")


@needs_rtx
def test_rtx_bool_and_static_io(tmp_path: Path, rtx: None) -> None:
    make, args, names, opset, _ = CASES["attn-fp32-opset18"]
    onnx_path = _export(make(), args, tmp_path / "attn.onnx", names, opset)
    inputs, outputs = trt_build.network_io(onnx_path, "rtx")
    assert inputs == (
        ("q", "float32", (1, 2, 6, 72)),
        ("kv", "float32", (1, 2, 10, 72)),
        ("key_mask", "bool", (1, 10)),
    )
    assert outputs == (("out", "float32", (1, 2, 6, 72)),)


@needs_rtx
def test_rtx_fp32_attention_node_needs_decomposable(tmp_path: Path, rtx: None) -> None:
    # RTX 1.7.1 has no fused fp32 kernel for ONNX Attention and does not decompose it unasked.
    make, args, names, opset, _ = CASES["attn-fp32-opset23"]
    onnx_path = _export(make(), args, tmp_path / "attn23.onnx", names, opset)
    with pytest.raises(EngineBuildError, match=r"attn23\.onnx.*Attention operation"):
        trt_build.build_engine(onnx_path, tmp_path / "attn23.plan", flavor="rtx")
    assert not (tmp_path / "attn23.plan").exists()


@needs_rtx
def test_corrupt_onnx_raises_and_leaves_nothing(tmp_path: Path, rtx: None) -> None:
    onnx_path = tmp_path / "broken.onnx"
    onnx_path.write_bytes(b"this is not an ONNX protobuf")
    out = tmp_path / "engines"
    with pytest.raises(EngineBuildError, match="broken.onnx"):
        trt_build.build_engine(onnx_path, out / "broken.plan", flavor="rtx")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(EngineBuildError, match="does not exist"):
        trt_build.network_io(tmp_path / "missing.onnx", "rtx")


@needs_rtx
def test_rtx_rejects_sm90_and_timing_cache(tmp_path: Path, rtx: None) -> None:
    with pytest.raises(ConfigError, match="8.0"):  # the message lists the supported targets
        trt_build.build_engine(tmp_path / "x.onnx", tmp_path / "x.plan", flavor="rtx",
                               compute_capabilities=["9.0"])  # fmt: skip
    with pytest.raises(ConfigError, match="timing_cache"):
        trt_build.build_engine(
            tmp_path / "x.onnx", tmp_path / "x.plan", flavor="rtx", timing_cache=tmp_path / "c"
        )


def test_unknown_flavor() -> None:
    with pytest.raises(ConfigError, match="onnxruntime"):
        trt_build.import_tensorrt("onnxruntime")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is importable here, so nothing is unavailable")
def test_full_tensorrt_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="tensorrt-cu12"):
        trt_build.import_tensorrt("tensorrt")


@pytest.mark.trt
@needs_full_trt
def test_full_tensorrt_build_with_timing_cache(tmp_path: Path) -> None:
    if trt_build.polygraphy_flavor() == "rtx":
        pytest.skip("polygraphy is bound to TensorRT-RTX in this process; run this test alone")
    make, args, names, opset, _ = CASES["mlp-fp32"]
    onnx_path = _export(make(), args, tmp_path / "mlp.onnx", names, opset)
    cache = tmp_path / "timing.cache"
    build = trt_build.build_engine(onnx_path, tmp_path / "mlp.plan", flavor="tensorrt",
                                   timing_cache=cache)  # fmt: skip
    assert build.engine_path.stat().st_size > 0 and cache.is_file()
    assert build.compute_capabilities == ()
    assert list(build.inputs) == _onnx_io(onnx_path)[0]
