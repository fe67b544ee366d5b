"""The fused DiT projections keep the maths: `python -m pytest tests/export/test_fuse.py`."""

from __future__ import annotations

import torch

from export.fuse import FusedAttention, FusedSwiGLU, fuse_dit_projections
from export.spec import export_model, graph_for
from presto_ref.checkpoint import random_model


def _inputs(model, frames: int = 24):
    g = torch.Generator().manual_seed(3)
    cfg = model.config
    x = torch.randn(2, cfg.dit.latent_channels, frames, generator=g)
    text = torch.randn(2, cfg.text.max_tokens, cfg.text.d_model, generator=g)
    mask = torch.zeros(2, cfg.text.max_tokens, dtype=torch.bool)
    mask[0, :5], mask[1, :9] = True, True  # two different paddings in one batch
    return x, torch.tensor([0.7, 12.0]), text, mask, torch.tensor([90.0, 140.0])


def test_fused_dit_matches_the_reference_at_every_budget() -> None:
    model = random_model("tiny", 0).eval()
    fused = export_model(model, "fp32")
    assert (
        sum(isinstance(m, FusedAttention) for m in fused.modules()) == model.config.dit.num_blocks
    )
    assert sum(isinstance(m, FusedSwiGLU) for m in fused.modules()) == model.config.dit.num_blocks
    inputs = _inputs(model)
    for budget in range(model.config.dit.num_blocks):
        with torch.no_grad():
            want = graph_for(model, "dit", budget)(*inputs)
            got = graph_for(fused, "dit", budget)(*inputs)
        # Every output element is the same dot product over the same weights; only the GEMM
        # blocking may differ, so fp32 agrees to accumulation-order rounding (measured 0.0 on
        # the CPU, where the blocking is the same). A swapped q/k/v slice or gate/up half gives
        # errors of order 1.
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-5, f"budget {budget}: relative L2 {err:.2e}"


def test_fusion_is_in_place_and_leaves_the_original_alone() -> None:
    model = random_model("tiny", 0)
    # Unpadded heads: the mask-free form (export/attention.py) adds zero rows and a bias.
    clone = export_model(model, "fp32", mask_free=False)
    assert not any(isinstance(m, FusedAttention) for m in model.modules())
    assert fuse_dit_projections(random_model("tiny", 1).dit) == model.config.dit.num_blocks
    # The text keys and values come from a view of the fused weight: no second copy is stored.
    n_ref = sum(p.numel() for p in model.dit.parameters())
    n_fused = sum(p.numel() for p in clone.dit.parameters())
    assert n_fused == n_ref
