"""export.quant_torch: the DiT with real FP8/INT8 GEMMs against the fake-quantized (Q/DQ) DiT.

Run: python -m pytest tests/export/test_quant_torch.py     (the CUDA cases run where CUDA is)

The scales are made here, not by ModelOpt: per-channel input ranges of the tiny fp32 DiT on three
sample calls, turned into LayerScales by export.quant_onnx.fused_scales (a one-member "fusion" is
ModelOpt's per-layer formula). Both implementations read the same scales, so the parity tests
check the kernels and the wiring, not the calibration (tests/calibration checks that).
"""

from __future__ import annotations

import copy

import pytest
import torch

from export.attention import pad_attention_heads
from export.quant_onnx import (
    BLOCK_LINEARS,
    QDQFusedAttention,
    QDQLinear,
    fused_scales,
    quantize_dit,
)
from export.quant_scales import LayerScales
from export.quant_torch import (
    FP8Linear,
    Int8Linear,
    QuantFusedAttention,
    check_cuda_shape,
    count_quantized_gemms,
    package_quantized_gemms,
    quant_linear,
    quantize_dit_torch,
)
from export.spec import dit_spec, export_model, graph_for
from export.verify import compare
from presto_common.errors import ArtifactError, ConfigError
from presto_common.names import QUANTIZATIONS
from presto_ref.dit import blocks_for_budget

PRECISIONS = QUANTIZATIONS
BATCH, FRAMES = 1, 32  # 32 audio tokens and 128 text tokens per call: quick, and M > 16
LAYERS = BLOCK_LINEARS  # a block's calibrated Linears, in block_scales' order
CALIBRATION_CALLS = ((1, 0.05), (2, 1.0), (3, 20.0))  # (seed, sigma)
HELD_OUT_CALLS = ((5, 0.5), (6, 1.0), (7, 10.0))
# The quantized GEMMs of one block: [q|k|v] over the audio, its [k|v] rows over the text, o,
# [w1|w3], w2.
GEMMS_PER_BLOCK = 5

# One quantized layer against its Q/DQ counterpart (CPU, fp32 activations), measured on the tiny
# DiT's block-0 inputs (attention, [w1|w3], w2): fp8 is bit-identical (rel L2 0: the CPU kernel
# dequantizes and multiplies in fp32, as F.linear on the DQ'd operands does); int8 differs by at
# most 2.0e-7 relative (an exact int32 sum scaled once, against fp32 sums of dequantized products).
# 1e-5 is 50x that, and far below one quantization step (1/127 of the range, 8e-3), so a wrong
# scale, smoothing factor or row slice fails.
MAX_LAYER_REL_L2 = 1e-5
# The whole DiT against the Q/DQ DiT, HELD_OUT_CALLS at budgets 0 and 1: fp8 identical, int8 at
# most 1.5e-7. A per-layer difference of 1e-7 can still move an activation across a rounding
# boundary of the next layer's int8 grid; with other sample calls (x = sigma * noise, sigma 0.05,
# 1, 10) one such flip gave rel L2 3.2e-3 while all other calls stayed <= 2e-7. The bound, 1e-2,
# allows a few flips; a wrong scale anywhere costs more (one quantization step is 8e-3 per layer).
MAX_DIT_REL_L2 = 1e-2
# Cosine of x0 against the fp32 DiT on the same calls: worst 0.99986 (fp8, budget 0, sigma 10),
# int8 0.99988. The bound is tests/calibration's bound for ModelOpt's scales (7x the measured
# worst 1 - cosine here).
MIN_COSINE_FP32 = 0.999


def sample_call(model, seed: int, sigma: float) -> tuple[torch.Tensor, ...]:
    """A DiT call at noise level sigma: x = data + sigma noise, both unit-variance samples."""
    x, s, text, mask, bpm = dit_spec(model, "fp32", BATCH, FRAMES, 0).sample_inputs(seed)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 100))
    return (x + sigma * noise, s * sigma, text, mask, bpm)


@pytest.fixture(scope="module")
def scales(tiny_model) -> dict[str, dict[str, LayerScales]]:
    """precision -> layer name (presto_ref's, unfused) -> LayerScales, from three sample calls."""
    channel_amax = {}
    hooks = []
    for i, block in enumerate(tiny_model.dit.blocks):
        for name in LAYERS:

            def record(module, args, key=f"blocks.{i}.{name}"):
                a = args[0].detach().abs().flatten(0, -2).amax(0)  # (K,)
                channel_amax[key] = torch.maximum(channel_amax.get(key, a), a)

            hooks.append(block.get_submodule(name).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for seed, sigma in CALIBRATION_CALLS:
                graph_for(tiny_model, "dit", 0)(*sample_call(tiny_model, seed, sigma))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for precision in PRECISIONS:
        out[precision] = {}
        for key, a in channel_amax.items():
            w = tiny_model.dit.get_submodule(key).weight.detach().float()
            one = LayerScales(input_amax=a.amax(), weight_amax=w.abs().amax(), input_channel_amax=a)
            out[precision][key] = fused_scales([one], w, precision)
    return out


def quantized_models(tiny_model, scales, precision: str, budget: int):
    """(Q/DQ fake-quantized, real-kernel) fused copies of the tiny model, and the layer names.
    Quantization reads the unpadded heads (mask_free=False); quantized_torch_model pads after it
    (tests/export/test_attention.py)."""
    fake = export_model(tiny_model, "fp32", mask_free=False)
    quantize_dit(fake.dit, budget, scales[precision], precision)
    real = export_model(tiny_model, "fp32", mask_free=False)
    names = quantize_dit_torch(real.dit, budget, scales[precision], precision)
    return fake, real, names


# --- one layer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_quantized_layer_matches_its_qdq_layer(tiny_model, scales, precision):
    fused = export_model(tiny_model, "fp32", mask_free=False)
    block, layers = fused.dit.blocks[0], scales[precision]
    seen = {}
    hooks = [
        block.attn.register_forward_pre_hook(lambda m, args: seen.__setitem__("attn", args)),
        block.ffn.w13.register_forward_pre_hook(lambda m, args: seen.__setitem__("w13", args)),
        block.ffn.w2.register_forward_pre_hook(lambda m, args: seen.__setitem__("w2", args)),
    ]
    with torch.no_grad():
        graph_for(fused, "dit", 0)(*sample_call(tiny_model, 6, 1.0))
    for h in hooks:
        h.remove()

    q, k, v, o, w1, w3, w2 = (layers[f"blocks.0.{n}"] for n in LAYERS)
    w13 = fused_scales([w1, w3], block.ffn.w13.weight.detach().float(), precision)
    pairs = {  # name -> (Q/DQ module, real-kernel module, inputs)
        "attn": (
            QDQFusedAttention(copy.deepcopy(block.attn), q, k, v, o, precision),
            QuantFusedAttention(copy.deepcopy(block.attn), q, k, v, o, precision),
            seen["attn"],
        ),
        "w13": (
            QDQLinear(block.ffn.w13, w13, precision),
            quant_linear(block.ffn.w13, w13, precision),
            seen["w13"],
        ),
        "w2": (
            QDQLinear(block.ffn.w2, w2, precision),
            quant_linear(block.ffn.w2, w2, precision),
            seen["w2"],
        ),
    }
    expected_type = FP8Linear if precision == "fp8" else Int8Linear
    for name, (fake, real, args) in pairs.items():
        with torch.no_grad():
            want, got = fake(*args), real(*args)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        parity = compare(want.numpy(), got.numpy())
        assert parity.rel_l2 <= MAX_LAYER_REL_L2, f"{precision} {name}: {parity}"
    assert isinstance(pairs["attn"][1].qkv, expected_type)
    assert isinstance(pairs["attn"][1].o, expected_type)


def test_fp8_weights_and_int8_weights_are_stored_in_their_low_precision(tiny_model, scales):
    fused = export_model(tiny_model, "fp32")
    w13 = fused.dit.blocks[0].ffn.w13
    members = [scales["fp8"][f"blocks.0.ffn.{n}"] for n in ("w1", "w3")]
    fp8 = FP8Linear(w13, fused_scales(members, w13.weight.detach().float(), "fp8"))
    members = [scales["int8"][f"blocks.0.ffn.{n}"] for n in ("w1", "w3")]
    int8 = Int8Linear(w13, fused_scales(members, w13.weight.detach().float(), "int8"))
    assert fp8.weight_q.dtype == torch.float8_e4m3fn and fp8.weight_q.shape == w13.weight.shape
    assert int8.weight_q.dtype == torch.int8 and int8.weight_scale.shape == (w13.out_features,)


def test_int8_pads_fewer_than_17_rows(tiny_model, scales):
    """torch._int_mm on CUDA needs M > 16: smaller M is padded, and the padding is dropped."""
    linear = export_model(tiny_model, "fp32").dit.blocks[0].ffn.w2
    layer = Int8Linear(linear, scales["int8"]["blocks.0.ffn.w2"])
    x = torch.randn(40, linear.in_features)
    with torch.no_grad():
        assert torch.equal(layer(x[:3]), layer(x)[:3])


# --- the DiT --------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("budget", [0, 1])
def test_quantized_dit_matches_the_qdq_dit_and_the_fp32_dit(tiny_model, scales, precision, budget):
    fake, real, names = quantized_models(tiny_model, scales, precision, budget)
    num_blocks = len(blocks_for_budget(tiny_model.config.dit.num_blocks, budget))
    assert len(names) == 4 * num_blocks
    assert all(isinstance(real.dit.get_submodule(n), (FP8Linear, Int8Linear)) for n in names)
    for seed, sigma in HELD_OUT_CALLS:
        call = sample_call(tiny_model, seed, sigma)
        with torch.no_grad():
            ref = graph_for(tiny_model, "dit", budget)(*call).numpy()
            want = graph_for(fake, "dit", budget)(*call).numpy()
            got = graph_for(real, "dit", budget)(*call).numpy()
        vs_fake, vs_fp32 = compare(want, got), compare(ref, got)
        assert vs_fake.rel_l2 <= MAX_DIT_REL_L2, f"{precision} b{budget} sigma {sigma}: {vs_fake}"
        assert vs_fp32.cosine >= MIN_COSINE_FP32, f"{precision} b{budget} sigma {sigma}: {vs_fp32}"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_exported_graph_keeps_one_low_precision_gemm_per_quantized_projection(
    tiny_model, scales, precision
):
    """The "not silently bf16" check: torch.export keeps aten._scaled_mm / aten._int_mm nodes."""
    budget = 1
    _, real, _ = quantized_models(tiny_model, scales, precision, budget)
    with torch.no_grad():
        program = torch.export.export(
            graph_for(real, "dit", budget), sample_call(tiny_model, 6, 1.0)
        )
    num_blocks = len(blocks_for_budget(tiny_model.config.dit.num_blocks, budget))
    assert count_quantized_gemms(program) == GEMMS_PER_BLOCK * num_blocks
    op = "_scaled_mm" if precision == "fp8" else "_int_mm"
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert f"aten.{op}.default" in targets
    with torch.no_grad():
        fp32 = torch.export.export(
            graph_for(export_model(tiny_model, "fp32"), "dit", budget),
            sample_call(tiny_model, 6, 1.0),
        )
    assert count_quantized_gemms(fp32) == 0


def test_aoti_package_on_cpu_runs_the_int8_kernels_and_matches_eager(tiny_model, scales, tmp_path):
    """One AOTInductor build (about 10 s here): the package calls _int_mm and agrees with eager."""
    from export.torch_backend import compile_package

    budget = 1
    _, real, _ = quantized_models(tiny_model, scales, "int8", budget)
    module, call = graph_for(real, "dit", budget), sample_call(tiny_model, 6, 1.0)
    build = compile_package(module, call, tmp_path / "dit-int8.pt2", device="cpu")
    num_blocks = len(blocks_for_budget(tiny_model.config.dit.num_blocks, budget))
    assert package_quantized_gemms(build.path) == GEMMS_PER_BLOCK * num_blocks
    package = torch._inductor.aoti_load_package(str(build.path))
    with torch.no_grad():
        want = module(*call)
    got = package(*call)
    got = got[0] if isinstance(got, (list, tuple)) else got
    # Same kernels, Inductor's fused elementwise code around them: measured rel L2 2.3e-7.
    parity = compare(want.numpy(), got.numpy())
    assert parity.rel_l2 <= MAX_LAYER_REL_L2, str(parity)


# --- refusals -------------------------------------------------------------------------------------


def test_missing_scales_and_unknown_precisions_are_refused(tiny_model, scales):
    dit = export_model(tiny_model, "fp32", mask_free=False).dit
    layers = dict(scales["int8"])
    del layers["blocks.3.ffn.w2"]
    with pytest.raises(ArtifactError, match="no scales for 1 layers of budget 0"):
        quantize_dit_torch(dit, 0, layers, "int8")
    with pytest.raises(ConfigError, match="'bf16' cannot be quantized"):
        quantize_dit_torch(dit, 0, scales["int8"], "bf16")
    w2 = dit.blocks[0].ffn.w2
    with pytest.raises(ConfigError, match="per-tensor weight amax"):
        FP8Linear(w2, scales["int8"]["blocks.0.ffn.w2"])
    with pytest.raises(ConfigError, match="SmoothQuant factors"):
        Int8Linear(w2, scales["fp8"]["blocks.0.ffn.w2"])


@pytest.mark.parametrize(
    ("precision", "k", "n", "ok"),
    [
        ("fp8", 64, 192, True),
        ("fp8", 72, 64, False),
        ("int8", 72, 64, True),
        ("int8", 64, 4, False),
    ],
)
def test_cuda_shape_rules(precision, k, n, ok):
    if ok:
        check_cuda_shape(precision, k, n)
    else:
        with pytest.raises(ConfigError, match=f"K={k} inputs and N={n} outputs cannot run on CUDA"):
            check_cuda_shape(precision, k, n)


# --- bf16 activations (the CUDA packages') -------------------------------------------------------

# The tiny DiT cast to bf16 (export_model), quantized, its heads padded (no mask), against the fp32
# Q/DQ DiT. Measured on the CPU, HELD_OUT_CALLS at budget 1 (the same padded or not): rel L2 up to
# 1.2e-2 (fp8) and 9.8e-3 (int8), where the bf16 DiT without quantization is 8.1e-3 from fp32:
# bf16's own rounding, plus the rounding flips it causes on the 8-bit grids. Cosine against fp32
# >= 0.99985. The bounds leave 2.5x (rel L2) and 6x
# (1 - cosine). On CUDA the GEMMs are cuBLASLt's (fp32 accumulation, like the CPU kernels), the
# rest is the same bf16 maths, so the same bounds apply (not yet measured on a GPU).
MAX_BF16_REL_L2 = 3e-2
MIN_BF16_COSINE_FP32 = 0.999


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantized_dit_in_bf16_matches_the_qdq_dit(tiny_model, scales, precision, device):
    budget = 1
    fake = export_model(tiny_model, "fp32", mask_free=False)
    quantize_dit(fake.dit, budget, scales[precision], precision)
    # cast first: 8-bit weights stay 8-bit
    real = export_model(tiny_model, "bf16", mask_free=False).to(device)
    quantize_dit_torch(real.dit, budget, scales[precision], precision)
    pad_attention_heads(real.dit)  # then without the mask, as quantized_torch_model builds it
    module = graph_for(real, "dit", budget)
    for seed, sigma in HELD_OUT_CALLS:
        call = sample_call(tiny_model, seed, sigma)
        with torch.no_grad():
            ref = graph_for(tiny_model, "dit", budget)(*call).numpy()
            want = graph_for(fake, "dit", budget)(*call).numpy()
            got = module(*(t.to(device) for t in call)).float().cpu().numpy()
        vs_fake, vs_fp32 = compare(want, got), compare(ref, got)
        assert vs_fake.rel_l2 <= MAX_BF16_REL_L2, f"{precision} sigma {sigma}: {vs_fake}"
        assert vs_fp32.cosine >= MIN_BF16_COSINE_FP32, f"{precision} sigma {sigma}: {vs_fp32}"
    if device == "cuda":  # the kernels survive torch.export on CUDA too
        with torch.no_grad():
            program = torch.export.export(module, tuple(t.to(device) for t in call))
        num_blocks = len(blocks_for_budget(tiny_model.config.dit.num_blocks, budget))
        assert count_quantized_gemms(program) == GEMMS_PER_BLOCK * num_blocks
