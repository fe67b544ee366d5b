"""benchmarks.flops against torch's FlopCounterMode on presto_ref's modules built on the meta device.

Both sides count only matmuls, convolutions and attention products (2 x MACs); neither counts
elementwise work (norms, softmax, Snake, SiLU, rotary, weight norm, bias adds). The residual
difference is therefore expected to be zero; the 2% tolerance leaves room for a counter that starts
counting a fused op differently (e.g. an SDPA backend that is counted with or without the mask).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import flops
from presto_ref.pipeline import Presto
from presto_ref.presets import get_preset

TOLERANCE = 0.02
BATCH = 2


def _counted(fn) -> int:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture(scope="module", params=["tiny", "small", "presto-ls"])
def meta_model(request):
    config = get_preset(request.param)
    with torch.device("meta"):
        model = Presto(config)
    return config, model


def test_formulas_match_the_flop_counter(meta_model) -> None:
    config, model = meta_model
    cfg = config.to_dict()
    B, frames = BATCH, 23  # an odd frame count, so no stride happens to divide evenly by chance
    S, D_text = config.text.max_tokens, config.text.d_model
    meta = torch.device("meta")
    ids = torch.zeros(B, S, dtype=torch.long, device=meta)
    mask = torch.ones(B, S, dtype=torch.bool, device=meta)
    x = torch.zeros(B, config.dit.latent_channels, frames, device=meta)
    text = torch.zeros(B, S, D_text, device=meta)
    scalars = torch.zeros(B, device=meta)
    mono = torch.zeros(B, 1, frames * config.hop_length, device=meta)

    pairs = {
        "text_encoder": (
            flops.text_encoder_flops(cfg, B),
            lambda: model.text_encoder(ids, mask),
        ),
        "vae_decoder": (
            flops.vae_decoder_flops(cfg, B, frames),
            lambda: model.vae.decoder(x),
        ),
        "stereo": (flops.stereo_flops(cfg, B, frames), lambda: model.stereo(mono)),
    }
    for budget in config.sampler.budgets.distinct_budgets:
        pairs[f"dit_b{budget}"] = (
            flops.dit_flops(cfg, B, frames, budget),
            lambda b=budget: model.dit(x, scalars, text, mask, scalars, budget=b),
        )
    for name, (formula, fn) in pairs.items():
        counted = _counted(fn)
        assert counted > 0, name
        assert abs(formula - counted) <= TOLERANCE * counted, (
            f"{config.name} {name}: formula {formula:,} vs counter {counted:,} "
            f"({formula / counted - 1:+.2%})"
        )


def test_paper_scale_dit_matches_the_notes() -> None:
    # notes/architecture.md 7.1: one full-depth DiT-XL forward at 32 s is 1.634 TFLOP.
    cfg = get_preset("presto-ls").to_dict()
    assert flops.dit_flops(cfg, 1, 1470, budget=0) / 1e12 == pytest.approx(1.634, abs=0.002)


def test_pipeline_totals_add_up() -> None:
    cfg = get_preset("tiny").to_dict()
    stages = flops.pipeline_flops(cfg, 1, 46, [2, 1, 0, 0])
    assert stages["dit_steps"] == sum(flops.dit_flops(cfg, 1, 46, b) for b in (2, 1, 0, 0))
    assert stages["e2e_stereo"] == stages["e2e_mono"] + stages["stereo"]
    assert (
        stages["e2e_mono"] == stages["text_encoder"] + stages["dit_steps"] + stages["vae_decoder"]
    )
