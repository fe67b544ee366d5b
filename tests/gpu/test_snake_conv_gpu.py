"""benchmarks/snake_conv.py's Triton kernel on CUDA in bf16: the residual unit as accurate as the
Inductor-compiled one the packages run.

    python -m pytest -q -rs -m gpu tests/gpu/test_snake_conv_gpu.py
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import snake_conv as sc

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.parametrize("dilation", [1, 9])
def test_the_fused_unit_is_as_close_to_fp32_as_the_reference(dilation: int) -> None:
    p = sc.unit_weights(96, 7, torch.bfloat16, "cuda", seed=dilation)
    x = (0.5 * torch.randn(2, 9600, 96, generator=torch.Generator().manual_seed(0))).to("cuda")
    x = x.to(torch.bfloat16)
    exact = sc.snake_unit_fp32(x, *p[:3], dilation, *p[3:])
    reference = sc.snake_unit_reference(x, *p[:3], dilation, *p[3:])
    fused = sc.snake_unit_fused(x, *p[:3], dilation, *p[3:])
    # Both round Snake's output and the first conv's to bf16 at the same points; the fused unit
    # adds the residual before its last rounding, the reference after. So the fused error may
    # not exceed the reference's by more than 20% (bf16 through one unit: about 3e-3).
    assert rel_l2(fused, exact) <= 1.2 * rel_l2(reference, exact) + 1e-4
