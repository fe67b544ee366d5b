"""Export-only rewrites keep the maths: `python -m pytest tests/export/test_fold.py`."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import parametrize

from export.fold import PolyphaseUpsample, fold_weight_norm, replace_transposed_convs
from export.spec import export_model
from presto_ref.checkpoint import random_model


def test_folding_weight_norm_keeps_the_outputs() -> None:
    model = random_model("tiny", 0).eval()
    folded = export_model(model, "fp32")
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    assert any(parametrize.is_parametrized(m) for m in model.modules()), (
        "the original must stay intact"
    )
    latents = 0.5 * torch.randn(1, 32, 20, generator=torch.Generator().manual_seed(0))
    mono = 0.2 * torch.randn(1, 1, 20 * 960, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # Folding computes g * v / ||v|| once instead of per call, and the polyphase upsamplers sum
        # the same products in another order: fp32 rounding only. Measured: max 3e-6 on audio of
        # RMS ~0.4, so 1e-5 absolute; a wrong tap or phase gives errors of order 0.1.
        torch.testing.assert_close(
            folded.vae.decode(latents), model.vae.decode(latents), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(folded.stereo(mono), model.stereo(mono), rtol=1e-5, atol=1e-5)


def test_fold_counts_every_weight_norm() -> None:
    model = random_model("tiny", 0)
    expected = sum(1 for m in model.modules() if parametrize.is_parametrized(m, "weight"))
    clone = export_model(model, "fp32")  # folds a fresh copy
    assert expected > 10
    assert fold_weight_norm(clone) == 0  # nothing left to fold


@pytest.mark.parametrize("stride", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("length", [1, 7])
def test_polyphase_upsample_equals_the_transposed_conv(stride: int, length: int) -> None:
    # The layout of every upsampler in presto_ref (layers.upsample_conv): kernel 2s, padding
    # ceil(s/2), output_padding s % 2. The rewrite only regroups the same products, so fp32 results
    # agree to accumulation-order rounding (~1e-6).
    g = torch.Generator().manual_seed(stride)
    conv = torch.nn.ConvTranspose1d(
        6, 3, 2 * stride, stride, padding=math.ceil(stride / 2), output_padding=stride % 2
    )
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    x = torch.randn(2, 6, length, generator=g)
    with torch.no_grad():
        want = conv(x)
        got = PolyphaseUpsample(conv)(x)
    assert got.shape == want.shape == (2, 3, length * stride)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_every_transposed_conv_is_replaced() -> None:
    clone = export_model(random_model("tiny", 0), "fp32")
    assert not any(isinstance(m, torch.nn.ConvTranspose1d) for m in clone.modules())
    assert sum(isinstance(m, PolyphaseUpsample) for m in clone.modules()) == 8  # 4 VAE + 4 stereo
    assert replace_transposed_convs(clone) == 0
