"""export/fp8_sdpa.py on the CPU: the FP8 DiT with its attention in FP8 (presto::attention_fp8's
fp32 reference here) against the FP8 DiT with bf16-style attention and the fp32 DiT, the op kept
by torch.export once per quantized block, and the refusals.

Run: python -m pytest tests/export/test_fp8_sdpa.py
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from export.quant_scales import load_calibration
from export.quant_torch import count_quantized_gemms, quantized_torch_model
from export.spec import dit_spec, graph_for
from presto_common.errors import ArtifactError, ConfigError
from presto_ref.dit import blocks_for_budget

BATCH, FRAMES = 2, 32
# x0 cosine on these calls (budgets 0 and 1, sigma 0.5 to 10), measured: 0.99993 or more against
# the FP8 DiT without FP8 attention, 0.99984 or more against fp32. The scales cannot disagree
# with each other (one s quantizes and descales each operand), so what this bounds is the E4M3
# rounding of q, k, v, P and o, and what the mask does: attending to the padded text (the mask set
# all-valid) measured 0.9956. 0.9995 is 3x the measured 1 - cosine against fp32.
MIN_COSINE = 0.9995


def call(model, seed: int, sigma: float):
    """A DiT call at noise level sigma, the second row's text padded after 3 tokens."""
    x, s, text, mask, bpm = dit_spec(model, "fp32", BATCH, FRAMES, 0).sample_inputs(seed)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 100))
    mask = mask.clone()
    mask[1, 3:] = False
    return (x + sigma * noise, s * sigma, text, mask, bpm)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.fixture(scope="module")
def fp8(calibrations):
    return load_calibration(calibrations["fp8"])


@pytest.mark.parametrize("budget", [0, 1])
def test_fp8_attention_keeps_the_dit_close(tiny_model, fp8, budget):
    plain, _ = quantized_torch_model(tiny_model, budget, fp8, "fp32")
    sdpa, _ = quantized_torch_model(tiny_model, budget, fp8, "fp32", fp8_attention=True)
    for seed, sigma in ((5, 0.5), (6, 1.0), (7, 10.0)):
        args = call(tiny_model, seed, sigma)
        with torch.no_grad():
            ref = graph_for(tiny_model, "dit", budget)(*args)
            want = graph_for(plain, "dit", budget)(*args)
            got = graph_for(sdpa, "dit", budget)(*args)
        assert cosine(got, want) >= MIN_COSINE, (budget, sigma, cosine(got, want))
        assert cosine(got, ref) >= MIN_COSINE, (budget, sigma, cosine(got, ref))


def test_padded_text_is_left_out(tiny_model, fp8):
    """The padding is masked by length: text tokens past a row's mask change nothing."""
    sdpa, _ = quantized_torch_model(tiny_model, 0, fp8, "fp32", fp8_attention=True)
    args = call(tiny_model, 5, 1.0)
    loud = args[2].clone()
    loud[1, 3:] = 50.0
    with torch.no_grad():
        first = graph_for(sdpa, "dit", 0)(*args)
        again = graph_for(sdpa, "dit", 0)(*args[:2], loud, *args[3:])
    assert torch.equal(first, again)


def test_export_keeps_the_op_once_per_quantized_block(tiny_model, fp8):
    budget = 1
    sdpa, _ = quantized_torch_model(tiny_model, budget, fp8, "fp32", fp8_attention=True)
    with torch.no_grad():
        program = torch.export.export(graph_for(sdpa, "dit", budget), call(tiny_model, 6, 1.0))
    num_blocks = len(blocks_for_budget(tiny_model.config.dit.num_blocks, budget))
    op = torch.ops.presto.attention_fp8.default
    calls = [n for n in program.graph.nodes if n.target is op]
    assert len(calls) == num_blocks
    for node in calls:  # k8 and v8 in one layout, (B, T + S, H, d') memory: the op copies neither
        k8, v8 = (arg.meta["val"] for arg in node.args[1:3])
        assert k8.stride() == v8.stride() and k8.transpose(1, 2).is_contiguous(), k8.stride()
    assert count_quantized_gemms(program) == 5 * num_blocks  # o still reads E4M3: _scaled_mm


def test_refusals(tiny_model, fp8, calibrations):
    with pytest.raises(ConfigError, match="fp8 calibration"):
        int8 = load_calibration(calibrations["int8"])
        quantized_torch_model(tiny_model, 0, int8, "fp32", fp8_attention=True)
    without = dataclasses.replace(fp8, attention={})
    with pytest.raises(ArtifactError, match="no attention ranges for blocks.0.attn"):
        quantized_torch_model(tiny_model, 0, without, "fp32", fp8_attention=True)
