"""calibration.recipes: the ranges read back from ModelOpt mean what export.quant_onnx assumes.

Run: python -m pytest tests/calibration/test_recipes.py
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from calibration.recipes import quantize_with_modelopt, read_scales
from export.quant_onnx import QDQLinear, fused_scales


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_qdq_linear_reproduces_modelopts_fake_quantized_linear(modelopt, precision):
    """One Linear whose input has outlier channels (what SmoothQuant is for), calibrated by ModelOpt:
    QDQLinear built from `read_scales` computes what ModelOpt's quantized module computes, so the
    smoothing direction and which operand each amax belongs to are read correctly."""
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(16, 32, generator=g) / 32**0.5)
        linear.bias.copy_(0.1 * torch.randn(16, generator=g))
    gain = torch.ones(32)
    gain[3], gain[17] = 20.0, 8.0  # two outlier channels
    data = [gain * torch.randn(4, 10, 32, generator=g) for _ in range(4)]
    model = nn.Sequential(copy.deepcopy(linear)).eval()
    quantize_with_modelopt(model, lambda m: [m(x) for x in data], precision)
    ours = QDQLinear(linear, read_scales(model, precision)["0"], precision)
    with torch.no_grad():
        for x in data:
            want, got = model(x), ours(x)
            # Same quantization grid; only float rounding differs (ModelOpt multiplies by
            # 1 / scale where ONNX divides by scale). Measured max |diff|: 1.9e-6 (int8),
            # 2.9e-6 (fp8), against a quantization error of 0.15 (int8) and 0.94 (fp8) on outputs
            # up to 19, so a smoothing or amax read the wrong way round cannot pass.
            assert torch.allclose(got, want, rtol=0, atol=1e-4), (got - want).abs().max()
            unquantized = linear(x)
            assert (got - unquantized).abs().max() > 1e-4  # the module does quantize


def test_fused_scales_of_one_layer_are_modelopts_own(modelopt):
    """`fused_scales` applies ModelOpt's SmoothQuant formula to the recorded per-channel ranges, so
    for a GEMM of one member it must give back what ModelOpt computed for that layer."""
    g = torch.Generator().manual_seed(1)
    linear = nn.Linear(32, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(16, 32, generator=g) / 32**0.5)
    gain = torch.ones(32)
    gain[5] = 30.0
    data = [gain * torch.randn(8, 32, generator=g) for _ in range(3)]
    model = nn.Sequential(copy.deepcopy(linear)).eval()
    quantize_with_modelopt(model, lambda m: [m(x) for x in data], "int8")
    theirs = read_scales(model, "int8")["0"]
    ours = fused_scales([theirs], linear.weight.detach(), "int8")
    assert torch.equal(ours.input_channel_amax, theirs.input_channel_amax)
    for field in ("smooth", "input_amax", "weight_amax"):
        assert torch.allclose(getattr(ours, field), getattr(theirs, field), rtol=1e-5), field
