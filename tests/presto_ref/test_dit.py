"""The DiT with Presto-L budgets: `python -m pytest tests/presto_ref/test_dit.py`."""

from __future__ import annotations

import pytest
import torch

from presto_common.errors import ConfigError
from presto_ref.config import DiTConfig
from presto_ref.dit import DiT, blocks_for_budget
from presto_ref.edm import EDMPrecond
from presto_ref.presets import PRESETS

CFG = PRESETS["tiny"].dit
B, T, S = 2, 24, 7


@pytest.fixture(scope="module")
def dit() -> DiT:
    model = DiT(CFG).eval()
    model.init_random(torch.Generator().manual_seed(0))
    return model


def inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 4:] = False  # the second prompt is shorter
    return dict(
        x=torch.randn(B, CFG.latent_channels, T, generator=g),
        c_noise=torch.log(torch.tensor([3.0, 0.2])) / 4,
        text=torch.randn(B, S, CFG.text_width, generator=g),
        text_mask=mask,
        bpm=torch.tensor([90.0, 128.0]),
    )


@pytest.mark.parametrize("budget", [0, 1, 2, 3])
def test_budget_runs_the_paper_blocks_in_order(dit: DiT, budget: int) -> None:
    ran: list[int] = []
    hooks = [
        blk.register_forward_hook(lambda m, i, o, k=k: ran.append(k))
        for k, blk in enumerate(dit.blocks)
    ]
    try:
        with torch.no_grad():
            dit(**inputs(), budget=budget)
    finally:
        for h in hooks:
            h.remove()
    n = CFG.num_blocks
    assert len(ran) == n - budget
    # Presto-L drops from the second-to-last block backwards; the last block always runs.
    assert ran == list(range(n - 1 - budget)) + [n - 1]


def test_blocks_for_budget_at_paper_scale() -> None:
    assert blocks_for_budget(28, 12) == tuple(range(15)) + (27,)
    assert len(blocks_for_budget(28, 12)) == 16
    with pytest.raises(ConfigError, match="budget=28 is out of range.*0..27"):
        blocks_for_budget(28, 28)
    with pytest.raises(ConfigError, match="budget=-1"):
        blocks_for_budget(28, -1)


def test_different_budgets_give_different_outputs(dit: DiT) -> None:
    with torch.no_grad():
        outs = [dit(**inputs(), budget=b) for b in range(CFG.num_blocks)]
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            rel = (outs[a] - outs[b]).norm() / outs[a].norm()
            assert rel > 0.05, f"budgets {a} and {b} differ by only {rel:.3g}"


def test_budget_conditioning_matters_beyond_dropping(dit: DiT) -> None:
    # Same blocks, different budget embedding: zero the embedder's effect by comparing the budget-0
    # forward with one where only the budget scalar differs. Runs all blocks both times.
    with torch.no_grad():
        base = dit(**inputs(), budget=0)
        e0 = dit.budget_embed(torch.zeros(B))
        e1 = dit.budget_embed(torch.ones(B))
    assert (e0 - e1).abs().max() > 1e-3
    assert base.isfinite().all()


def test_every_weight_is_exercised(dit: DiT) -> None:
    # With adaLN-Zero any of the modulation, gate or output layers would be zero and the network
    # would ignore most weights; with our init every parameter gets a gradient.
    dit.zero_grad()
    out = dit(**inputs(), budget=0)
    (out * torch.randn_like(out)).sum().backward()
    dead = [n for n, p in dit.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    zero = [n for n, p in dit.named_parameters() if p.abs().max() == 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert not zero, f"all-zero parameters: {zero}"


def test_init_is_seeded(dit: DiT) -> None:
    other = DiT(CFG)
    other.init_random(torch.Generator().manual_seed(0))
    assert all(
        torch.equal(a, b) for a, b in zip(dit.state_dict().values(), other.state_dict().values())
    )
    other.init_random(torch.Generator().manual_seed(1))
    assert not torch.equal(dit.proj_out.weight, other.proj_out.weight)


def test_padded_text_tokens_are_ignored(dit: DiT) -> None:
    a = inputs()
    b = inputs()
    b["text"][1, 4:] = 100.0  # change only the masked tokens of item 1
    with torch.no_grad():
        torch.testing.assert_close(dit(**a), dit(**b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("field", ["text", "bpm", "c_noise"])
def test_output_depends_on_each_condition(dit: DiT, field: str) -> None:
    a, b = inputs(), inputs()
    b[field] = b[field] + (1.0 if field != "bpm" else 20.0)
    with torch.no_grad():
        rel = (dit(**a) - dit(**b)).norm() / dit(**a).norm()
    assert rel > 1e-2, f"changing {field} moved the output by only {rel:.3g}"


def test_items_are_independent(dit: DiT) -> None:
    full = inputs()
    with torch.no_grad():
        batch = dit(**full)
        alone = dit(**{k: v[1:] for k, v in full.items()})
    torch.testing.assert_close(batch[1:], alone, rtol=1e-5, atol=1e-5)


def test_hidden_variance_stays_in_range(dit: DiT) -> None:
    # The residual stream starts near unit variance; each gated branch adds about 0.3^2, so after
    # N blocks it should sit within [0.5, 1 + 0.5 N] rather than collapse or blow up.
    variances: list[float] = []
    hooks = [
        blk.register_forward_hook(lambda m, i, o: variances.append(o.var().item()))
        for blk in dit.blocks
    ]
    den = EDMPrecond(dit, 0.5)
    x0 = 0.5 * torch.randn(B, CFG.latent_channels, T, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            for sigma in (80.0, 1.0, 0.01):
                a = inputs()
                out = den(
                    x0 + sigma * torch.randn_like(x0),
                    torch.full((B,), sigma),
                    text=a["text"],
                    text_mask=a["text_mask"],
                    bpm=a["bpm"],
                )
                assert 0.1 < out.std().item() < 2.0
    finally:
        for h in hooks:
            h.remove()
    assert all(0.5 < v < 1 + 0.5 * CFG.num_blocks for v in variances), variances


def test_paper_scale_parameter_count() -> None:
    cfg = DiTConfig()
    with torch.device("meta"):
        model = DiT(cfg)
    D, F, N = cfg.width, cfg.ffn_hidden, cfg.num_blocks
    per_block = 4 * D * D + 3 * D * F + (D * 6 * D + 6 * D)  # attention, SwiGLU, adaLN (with bias)
    embedders = 3 * ((cfg.freq_dim * D + D) + (D * D + D))
    other = (32 * D + D) + (768 * D + D) + D + 2 * (D * 2 * D + 2 * D) + (D * 32 + 32)
    assert sum(p.numel() for p in model.parameters()) == N * per_block + embedders + other
    assert (
        sum(p.numel() for p in model.blocks.parameters()) == 28 * 23_894_784
    )  # 23.9 M per block, as DiT-XL
