"""benchmarks/snake_conv.py: its reference is presto_ref's residual unit, and its Triton kernel
computes that unit (on the CPU through Triton's interpreter, where Triton is installed).

    python -m pytest -q tests/benchmarks/test_snake_conv.py
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from benchmarks import snake_conv as sc
from presto_ref.vae import ResidualUnit


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def unit_params(unit: ResidualUnit) -> tuple:
    """The unit's alphas (C,), weights (K, C_in, C_out) and biases, channels-last order."""

    def w(conv) -> torch.Tensor:  # the weight-normed conv's effective weight
        return conv.weight.detach().permute(2, 1, 0).contiguous()

    return (
        unit.snake1.alpha.detach().flatten(), w(unit.conv1), unit.conv1.bias.detach(),
        unit.snake2.alpha.detach().flatten(), w(unit.conv2), unit.conv2.bias.detach(),
    )  # fmt: skip


@pytest.mark.parametrize("dilation", [1, 3, 9])
def test_the_reference_is_presto_refs_residual_unit(dilation: int) -> None:
    unit = ResidualUnit(12, dilation)
    unit.init_random(torch.Generator().manual_seed(dilation))
    x = torch.randn(2, 12, 200, generator=torch.Generator().manual_seed(1))
    a1, w1, b1, a2, w2, b2 = unit_params(unit)
    with torch.no_grad():
        want = unit(x).transpose(1, 2)  # (B, T, C)
        got = sc.snake_unit_reference(
            x.transpose(1, 2).contiguous(), a1, w1, b1, dilation, a2, w2, b2
        )
    # The same fp32 sums through another conv call: rounding only.
    assert rel_l2(got, want) < 1e-6


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs Triton and TRITON_INTERPRET=1 (the kernel on the CPU through the interpreter)",
)
@pytest.mark.parametrize(
    ("channels", "kernel", "dilation", "samples"), [(16, 7, 3, 300), (40, 3, 1, 130)]
)
def test_the_kernel_computes_the_unit_in_the_interpreter(
    channels, kernel, dilation, samples
) -> None:
    p = sc.unit_weights(channels, kernel, torch.float32, "cpu", seed=1)
    x = torch.randn(2, samples, channels, generator=torch.Generator().manual_seed(2))
    want = sc.snake_unit_reference(x, *p[:3], dilation, *p[3:])
    got = sc.snake_unit_fused(x, *p[:3], dilation, *p[3:], block_t=64, block_ci=16)
    # fp32 throughout: two orders of the same sums (measured 1.1e-7 and 2.0e-7); a wrong tap,
    # dilation, padding or residual is O(1). bf16 is checked on CUDA only: the interpreter rounds
    # fp32 to bf16 by truncation (half its conversions differ from torch's round-to-nearest).
    assert rel_l2(got, want) < 1e-5
