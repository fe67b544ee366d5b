"""`export.build --quantization {fp8,int8} --calibration DIR`: Q/DQ DiT graphs in a build, their
manifest records, the runtime on them (ORT CPU), the torch packages, TensorRT-RTX engines (the
refused flags are tests/export/test_quantization_flags.py).

Run: python -m pytest tests/export/test_quantized_build.py

The calibrations (tiny preset, 3 prompts, 1 seed) come from tests/conftest.py; the text encoder,
VAE decoder and stereo model are taken from tests/export/conftest.py's unquantized tiny build, so
each quantized build exports only its three DiT graphs.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import build_folder
from export.builders import QDQ_PARITY_BOUND
from export.plan import plan_build
from export.reuse import artifact_key, reusable, signature, spec_signature
from presto_common.errors import EngineBuildError
from presto_ref.dit import blocks_for_budget
from presto_ref.presets import get_preset
from runtime.manifest import Manifest

QUANTIZATIONS = ("int8", "fp8")
TINY = get_preset("tiny")


@pytest.fixture(scope="session")
def quantized_builds(calibrations, tiny_onnx_build, tiny_onnx_options, tmp_path_factory):
    """ "int8" / "fp8" -> (folder, the BuiltArtifacts): tiny_onnx_build's options, DiT quantized,
    verified on ORT, the other components reused from tiny_onnx_build."""
    root = tmp_path_factory.mktemp("quantized")
    builds = {}
    for q in QUANTIZATIONS:
        built = []
        options = {**tiny_onnx_options, "verify": True, "reuse_from": [tiny_onnx_build]}
        out = root / q
        build_folder(
            out, **options, quantization=q, calibration=calibrations[q], on_artifact=built.append
        )
        builds[q] = (out, built)
    return builds


def op_types(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# --- the graphs and the manifest ------------------------------------------------------------------


@pytest.mark.parametrize("q", QUANTIZATIONS)
def test_every_dit_graph_has_qdq_and_no_other_graph_has_any(quantized_builds, q):
    folder, built = quantized_builds[q]
    manifest = Manifest.load(folder)
    dits = [a for a in manifest.artifacts if a.component == "dit"]
    assert sorted(a.budget for a in dits) == [0, 1, 2]
    for art in manifest.artifacts:
        ops = op_types(folder / art.file)
        if art.component == "dit":
            assert ops["QuantizeLinear"] == ops["DequantizeLinear"] > 0, art.file
            # Four fused GEMMs ([q|k|v], o, [w1|w3], w2) per block that the budget runs.
            blocks = blocks_for_budget(TINY.dit.num_blocks, art.budget)
            assert art.build["quantized_layers"] == 4 * len(blocks), art.file
            assert art.build["opset"] == 19
        else:
            assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 0, art.file
    # Only the DiT graphs were built; the rest came from the unquantized build.
    assert {b.name for b in built if not b.reused} == {f"dit-b{b}-{q}-1x46" for b in (0, 1, 2)}


@pytest.mark.parametrize("q", QUANTIZATIONS)
def test_manifest_records_quantization_and_calibration(
    quantized_builds, calibrations, tiny_onnx_build, q
):
    folder, _ = quantized_builds[q]
    manifest = Manifest.load(folder)
    scales_sha256 = json.loads((calibrations[q] / "calibration.json").read_text())["scales_sha256"]
    for art in manifest.artifacts:
        if art.component == "dit":
            # The Q/DQ graph keeps fp32 tensors and operations besides its GEMMs.
            assert (art.precision, art.quantization) == ("fp32", q)
            assert art.calibration_sha256 == scales_sha256
            assert art.build["signature"]["calibration_sha256"] == scales_sha256
            assert art.file == f"dit-b{art.budget}-{q}-1x46.onnx"
        else:
            assert (art.quantization, art.calibration_sha256) == (None, None)
    source = manifest.build_env["source"]
    assert source["quantization"] == q
    assert source["calibration"] == str(calibrations[q].absolute())
    unquantized = Manifest.load(tiny_onnx_build)
    assert {(a.quantization, a.calibration_sha256) for a in unquantized.artifacts} == {(None, None)}


def test_quantized_and_unquantized_artifacts_are_never_taken_for_each_other(
    quantized_builds, tiny_onnx_build, tiny_model
):
    from export.reuse import weights_digest
    from export.spec import make_specs

    folder, _ = quantized_builds["int8"]
    int8 = Manifest.load(folder)
    plan = plan_build(TINY, backends=("onnx",), durations_s=(1.0,))
    sig = signature(plan, "onnx", TINY.config_hash(), weights_digest(tiny_model))
    fp32_dit = make_specs(tiny_model, "fp32", (1,), (46,), (0,), components=("dit",))[0]
    int8_dit = dataclasses.replace(fp32_dit, quantization="int8", precision="fp32")
    int8_plan = dataclasses.replace(plan, calibration_sha256=int8.artifacts[1].calibration_sha256)
    other_plan = dataclasses.replace(plan, calibration_sha256="0" * 64)
    int8_sig = spec_signature(sig, int8_dit, int8_plan, "onnx")
    sources = [(int8, folder), (Manifest.load(tiny_onnx_build), tiny_onnx_build)]
    # The int8 DiT is found under its own key and signature; fp32 finds the fp32 one.
    found = reusable(sources, artifact_key(int8_dit, "onnx"), int8_sig)
    assert found is not None and found[0].quantization == "int8"
    found = reusable(sources, artifact_key(fp32_dit, "onnx"), sig)
    assert found is not None and found[0].quantization is None and found[1] == tiny_onnx_build
    # Nothing is found for another calibration, nor for an unquantized key with a quantized build
    # as the only source.
    other_sig = spec_signature(sig, int8_dit, other_plan, "onnx")
    assert reusable(sources, artifact_key(int8_dit, "onnx"), other_sig) is None
    assert reusable(sources[:1], artifact_key(fp32_dit, "onnx"), sig) is None


def test_rebuild_command_repeats_the_quantization(quantized_builds, calibrations):
    from runtime.hints import rebuild_command

    folder, _ = quantized_builds["fp8"]
    manifest = Manifest.load(folder)
    command = rebuild_command(manifest, folder)
    assert f"--quantization fp8 --calibration {calibrations['fp8'].absolute()}" in command
    assert "--fp8-attention" not in command
    manifest.build_env["source"]["fp8_attention"] = True  # as a --fp8-attention build records
    assert rebuild_command(manifest, folder).endswith(f"--fp8-attention --out {folder}")


# --- the runtime on the quantized build (ORT CPU) -------------------------------------------------

# Stereo audio of runtime.Pipeline on the quantized ONNX build (ORT CPU) against presto_ref's fp32
# model, same noise: signal-to-error ratio in dB, -20 log10(rel L2), for the three takes below.
# Measured (tiny, init seed 0, calibrated on 3 prompts x 1 seed as tests/conftest.py does):
#   int8 23.7, 26.1, 24.0 dB    fp8 22.1, 22.6, 21.7 dB
# (tests/calibration/test_qdq.py measures the final latents of other takes instead: 31-33 dB.)
# ORT CPU runs FP8 Q/DQ (float8e4m3fn
# QuantizeLinear-19) as well as INT8, so both are run. The inputs and the calibration are fixed, so
# only float rounding (ORT kernels, threads) moves these figures; the bounds leave 2.2 dB (fp8) and
# 2.7 dB (int8) under the worst take, i.e. rel L2 10.6% and 8.9% where 8.2% and 6.5% were measured.
MIN_SNR_DB = {"int8": 21.0, "fp8": 19.5}
TAKES = (("warm lofi piano", 3), ("a quiet harp melody over rain", 7), ("hard trap beat", 8))


@pytest.mark.parametrize("q", QUANTIZATIONS)
def test_quantized_build_runs_in_the_runtime_close_to_the_fp32_reference(
    quantized_builds, tiny_model, q
):
    from presto_ref.pipeline import Request
    from runtime.pipeline import Pipeline

    folder, _ = quantized_builds[q]
    pipe = Pipeline(folder, backend="onnxruntime", device="cpu")
    snrs = []
    for prompt, seed in TAKES:
        got = pipe.generate([prompt], seeds=[seed], bpm=100, duration_s=1.0).samples
        request = Request(prompts=(prompt,), seeds=(seed,), duration_s=1.0, bpm=100)
        want = tiny_model.generate(request).numpy()
        rel_l2 = np.linalg.norm(got - want) / np.linalg.norm(want)
        snrs.append(round(float(-20 * np.log10(rel_l2)), 1))
    assert min(snrs) >= MIN_SNR_DB[q], f"{q}: SNR {snrs} dB"


# --- the torch backend: real FP8/INT8 GEMMs (export/quant_torch.py) ------------------------------


def test_torch_builder_compiles_the_dit_with_int8_gemms(calibrations, tiny_model, tmp_path):
    """One quantized DiT package (build_torch, as build_folder calls it), not a whole folder: an
    AOTInductor compile takes ~10 s here. INT8 only: both share the builder's path, and
    tests/export/test_quant_torch.py covers FP8's kernels."""
    import torch

    from export.builders import BuildContext, build_torch
    from export.quant_scales import load_calibration
    from export.quant_torch import package_quantized_gemms
    from export.spec import make_specs
    from export.verify import compare

    options = {"quantization": "int8", "calibration": calibrations["int8"]}
    plan = plan_build(TINY, backends=("torch",), durations_s=(1.0,), budgets=(2,), **options)
    calibration = load_calibration(calibrations["int8"])
    (spec,) = make_specs(
        tiny_model, "fp32", (1,), plan.frames, (2,), components=("dit",), calibration=calibration
    )
    ctx = BuildContext(plan, tiny_model, tmp_path, None, calibration)
    with torch.no_grad():
        name, details = build_torch(spec, ctx)
    assert name == "dit-b2-int8-1x46-cpu.pt2"
    num_blocks = len(blocks_for_budget(TINY.dit.num_blocks, 2))
    assert details["quantized_layers"] == 4 * num_blocks
    # Five INT8 GEMMs per block run: [q|k|v], its text [k|v] rows, o, [w1|w3], w2.
    assert package_quantized_gemms(tmp_path / name) == 5 * num_blocks
    inputs = spec.sample_inputs(0)
    with torch.no_grad():
        got = torch._inductor.aoti_load_package(str(tmp_path / name))(*inputs)
        want = spec.module(*inputs)  # the Q/DQ graph's fake-quantized module
    parity = compare(want.numpy(), got.numpy())
    # Same scales and rounding, the products summed exactly in int32 instead of in fp32: measured
    # rel L2 2.1e-7. The bound is the build's own for Q/DQ against fake quantization (builders.py).
    assert parity.rel_l2 < QDQ_PARITY_BOUND, parity


def test_a_bf16_torch_build_runs_its_quantized_dit_at_bf16(calibrations, monkeypatch, tmp_path):
    """Around its real FP8/INT8 GEMMs a torch package's DiT runs at --precision: at the fp32 of an
    fp32 Q/DQ graph the FP8 DiT would be timed against bf16 with fp32 attention and norms. The
    torch builder is replaced by one that records the specs (an AOTInductor compile per graph
    would take minutes here; the test above compiles one)."""
    from export import builders

    seen, modules = [], []

    def record(spec, ctx):
        seen.append(spec)
        if spec.quantization is not None:  # the module the real builder would compile
            modules.append(builders.quantized_torch_module(spec, ctx)[0])
        name = f"{spec.name}-cpu.pt2"
        (ctx.staging / name).write_bytes(b"package")
        return name, {}

    monkeypatch.setitem(builders.BUILDERS, "torch", record)
    options = {"quantization": "int8", "calibration": calibrations["int8"]}
    manifest = build_folder(
        tmp_path / "b", preset="tiny", backends=("torch",), precision="bf16",
        durations_s=(1.0,), budgets=(2,), **options,
    )  # fmt: skip
    dits = [s for s in seen if s.component == "dit"]
    assert [s.name for s in dits] == ["dit-b2-int8-1x46"]
    assert dits[0].precision == "bf16" and dits[0].quantization == "int8"
    (art,) = manifest.find("dit", "torch")
    assert (art.precision, art.quantization) == ("bf16", "int8")
    assert art.calibration_sha256 is not None
    # bf16 around the GEMMs; the 8-bit weights and fp32 scales as the Q/DQ graph computes them
    (module,) = modules
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    kinds = {name.rsplit(".", 1)[-1]: t.dtype for name, t in tensors.items()}
    assert kinds["weight_q"] == torch.int8 and kinds["weight_scale"] == torch.float32
    assert {t.dtype for n, t in tensors.items() if "norm" in n} == {torch.bfloat16}
    # weight bytes: those of the bf16 call, less one byte for each quantized weight (8-bit, not 16)
    from presto_ref.flops import forward_cost

    bf16 = forward_cost(TINY, "dit", 1, art.frames, 2, "bf16").weight_bytes
    # forward_cost counts the heads unpadded: not the zero rows and columns export/attention.py
    # adds to the attention's 8-bit weights
    D = TINY.dit.width
    unpadded = {"attn.qkv.weight_q": 3 * D * D, "attn.o.weight_q": D * D}
    quantized = sum(
        next((v for k, v in unpadded.items() if n.endswith(k)), t.numel())
        for n, t in tensors.items()
        if n.endswith("weight_q")
    )
    assert art.weight_bytes == bf16 - quantized, (art.weight_bytes, bf16, quantized)


@pytest.fixture(scope="module")
def bf16_qdq(calibrations, tmp_path_factory):
    """q -> the bf16 Q/DQ DiT graph of budget 0 (tiny, 1 s), verified against its module only."""
    root = tmp_path_factory.mktemp("bf16-qdq")
    out = {}
    for q in QUANTIZATIONS:
        manifest = build_folder(
            root / q, preset="tiny", backends=("onnx",), precision="bf16", durations_s=(1.0,),
            budgets=(0,), quantization=q, calibration=calibrations[q],
        )  # fmt: skip
        (art,) = manifest.find("dit", "onnx")
        out[q] = (root / q, art)
    return out


@pytest.mark.parametrize("q", QUANTIZATIONS)
def test_a_bf16_qdq_graph_is_bf16_around_its_gemms(bf16_qdq, q):
    """A strongly typed TensorRT network runs each op in its ONNX type: the Q/DQ graph of a bf16
    build has bf16 scales, so its GEMMs' operands and everything around them are bf16."""
    folder, art = bf16_qdq[q]
    assert (art.precision, art.quantization) == ("bf16", q)
    assert "module_parity" in art.build and art.build["module_parity"]["cosine"] > 0.99
    graph = onnx.load(str(folder / art.file)).graph
    types = {i.name: i.data_type for i in graph.initializer}
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert qs and {types[n.input[1]] for n in qs} == {onnx.TensorProto.BFLOAT16}
    zero = onnx.TensorProto.INT8 if q == "int8" else onnx.TensorProto.FLOAT8E4M3FN
    assert {types[n.input[2]] for n in qs} == {zero}


# --- TensorRT-RTX engines from the Q/DQ graphs ----------------------------------------------------

HAS_RTX = any(importlib.util.find_spec(m) for m in ("tensorrt_rtx", "tensorrt_rtx_bindings"))
needs_rtx = pytest.mark.skipif(
    not HAS_RTX,
    reason="TensorRT-RTX wheels not installed: pip install "
    "tensorrt-rtx-cu13-bindings==1.7.1.116 tensorrt-rtx-cu13-libs==1.7.1.116",
)


@pytest.fixture
def trt_build():
    """export.trt_build, skipping where Polygraphy is bound to full TensorRT (tests/conftest.py
    binds it to RTX where RTX is the only TensorRT installed)."""
    from export import trt_build

    if trt_build.polygraphy_flavor() == "tensorrt":
        pytest.skip("polygraphy is bound to full TensorRT in this process; run this file alone")
    return trt_build


@needs_rtx
@pytest.mark.parametrize(("q", "target"), [("int8", "8.0"), ("fp8", "8.9")])
def test_rtx_engines_build_from_the_quantized_onnx(
    quantized_builds, calibrations, trt_build, tmp_path, q, target
):
    """Ahead of time, on a machine without a GPU: INT8 Q/DQ for the A100 (sm_80), FP8 for Ada+."""
    folder, _ = quantized_builds[q]
    built = []
    build_folder(
        tmp_path / "engines",
        preset="tiny",
        backends=("onnx", "tensorrt"),
        durations_s=(1.0,),
        trt="rtx",
        compute_capabilities=(target,),
        quantization=q,
        calibration=calibrations[q],
        reuse_from=[folder],
        on_artifact=built.append,
    )
    engines = [b for b in built if b.artifact.backend == "tensorrt"]
    assert len(engines) == 6 and not any(b.reused for b in engines)
    assert all(not b.reused or b.artifact.backend == "onnx" for b in built)
    for b in engines:
        art = b.artifact
        assert art.build["compute_capabilities"] == [target]
        assert art.quantization == (q if art.component == "dit" else None)


@needs_rtx
def test_rtx_itself_refuses_fp8_for_the_a100(quantized_builds, trt_build, tmp_path):
    """Why plan_build refuses fp8 below 8.9 up front: RTX fails only once the engine is built."""
    folder, _ = quantized_builds["fp8"]
    onnx_path = folder / "dit-b1-fp8-1x46.onnx"
    with pytest.raises(EngineBuildError, match="Cannot compile for target.*sm80"):
        trt_build.build_engine(
            onnx_path, tmp_path / "x.plan", flavor="rtx", compute_capabilities=["8.0"]
        )
    assert list(tmp_path.iterdir()) == []


@needs_rtx
@pytest.mark.parametrize(("q", "target"), [("int8", "8.0"), ("fp8", "8.9")])
def test_rtx_builds_the_bf16_qdq_graphs(bf16_qdq, calibrations, trt_build, tmp_path, q, target):
    folder, _ = bf16_qdq[q]
    manifest = build_folder(
        tmp_path / "engines", preset="tiny", backends=("onnx", "tensorrt"), precision="bf16",
        durations_s=(1.0,), budgets=(0,), trt="rtx", compute_capabilities=(target,),
        quantization=q, calibration=calibrations[q], reuse_from=[folder],
    )  # fmt: skip
    (engine,) = manifest.find("dit", "tensorrt")
    assert (engine.precision, engine.quantization) == ("bf16", q)
    assert engine.build["compute_capabilities"] == [target]
