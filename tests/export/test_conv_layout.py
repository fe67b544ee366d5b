"""Conv1d as a height-1 conv2d keeps the maths: `python -m pytest tests/export/test_conv_layout.py`."""

from __future__ import annotations

import torch
from torch import nn

from export.conv_layout import Conv1dAs2d, conv1d_as_conv2d
from export.spec import export_model, graph_for
from presto_ref.checkpoint import random_model


def test_conv1d_as_conv2d_matches_every_conv_setting() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 50, generator=g)
    for kw in (
        {"kernel_size": 7, "padding": 3},
        {"kernel_size": 3, "dilation": 5, "padding": 5},
        {"kernel_size": 4, "stride": 2, "padding": 1},
        {"kernel_size": 1},
        {"kernel_size": 3, "groups": 2, "padding": "same", "bias": False},
    ):
        conv = nn.Conv1d(8, 6, **kw)
        with torch.no_grad():
            # The same products summed by another kernel: fp32 rounding only (~1e-7).
            torch.testing.assert_close(Conv1dAs2d(conv)(x), conv(x), rtol=1e-5, atol=1e-6)


def test_swap_is_undone_and_keeps_the_audio_graphs() -> None:
    model = export_model(random_model("tiny", 0), "fp32")
    latents = 0.5 * torch.randn(1, 32, 12, generator=torch.Generator().manual_seed(1))
    mono = 0.2 * torch.randn(1, 1, 12 * 960, generator=torch.Generator().manual_seed(2))
    width = torch.ones(1)
    dec, st = graph_for(model, "vae_decoder"), graph_for(model, "stereo")
    n_conv = sum(type(m) is nn.Conv1d for m in model.modules())
    with torch.no_grad():
        want = dec(latents), st(mono, width)
        with conv1d_as_conv2d(model) as swapped:
            assert swapped == n_conv > 10
            assert not any(type(m) is nn.Conv1d and not _wrapped(model, m) for m in model.modules())
            got = dec(latents), st(mono, width)
    assert sum(type(m) is nn.Conv1d for m in model.modules()) == n_conv
    assert not any(isinstance(m, Conv1dAs2d) for m in model.modules())
    # Measured max |diff| ~1e-6 on audio of RMS ~0.4 (fp32 accumulation order); a wrong padding,
    # stride or dilation shifts or stretches the audio and gives errors of order 0.1.
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _wrapped(model: nn.Module, conv: nn.Module) -> bool:
    return any(isinstance(m, Conv1dAs2d) and m.conv is conv for m in model.modules())
