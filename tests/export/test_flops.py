"""FLOPs and weight bytes of one call, as export writes them into every manifest artifact
(presto_ref.flops, also `export.forward_cost`): `python -m pytest tests/export/test_flops.py`.

Everything but the export-form comparison runs on the meta device, so paper-scale figures cost
well under a second each.
"""

from __future__ import annotations

import pytest
import torch

from export import forward_cost, forward_flops
from export.fold import PolyphaseUpsample
from export.fuse import FusedAttention
from export.spec import export_model
from presto_common.errors import ConfigError
from presto_ref.checkpoint import random_model
from presto_ref.describe import describe
from presto_ref.pipeline import Presto
from presto_ref.presets import get_preset

PAPER = get_preset("presto-ls")
FRAMES_32S = 1470  # 32 s at 44.1 kHz, hop 960


def test_paper_scale_figures_match_the_notes() -> None:
    # notes/architecture.md 7.1 and 7.3 (closed form, cross-checked there with the same counter):
    # one full-depth DiT-XL forward at 32 s is 1.634 TFLOP; 12 blocks dropped 0.933 + edges; the
    # 1536-wide hop-960 VAE decoder 2.43 TFLOP; T5-base on 128 tokens about 22 GFLOP.
    def tflop(component: str, budget: int | None = None) -> float:
        return forward_flops(PAPER, component, 1, FRAMES_32S, budget) / 1e12

    assert tflop("dit", 0) == pytest.approx(1.634, abs=0.002)
    assert tflop("dit", 8) == pytest.approx(1.167, abs=0.002)
    assert tflop("dit", 12) == pytest.approx(0.934, abs=0.002)
    assert tflop("vae_decoder") == pytest.approx(2.43, abs=0.01)
    assert tflop("text_encoder") == pytest.approx(0.0223, abs=0.0005)


def test_a_budget_drops_whole_blocks_of_flops_and_weights() -> None:
    full = forward_cost(PAPER, "dit", 1, FRAMES_32S, 0, "bf16")
    one = forward_cost(PAPER, "dit", 1, FRAMES_32S, 1, "bf16")
    block_flops, block_bytes = full.flops - one.flops, full.weight_bytes - one.weight_bytes
    # A DiT block: 58.34 GFLOP at 32 s (notes 7.1); q, k, v, o, three SwiGLU and adaLN matrices.
    D, F = PAPER.dit.width, PAPER.dit.ffn_hidden
    assert block_flops / 1e9 == pytest.approx(58.34, abs=0.01)
    assert block_bytes == 2 * (4 * D * D + 3 * D * F + D * 6 * D + 6 * D)  # bf16, adaLN bias
    for budget in (8, 12):
        cost = forward_cost(PAPER, "dit", 1, FRAMES_32S, budget, "bf16")
        assert cost.flops == full.flops - budget * block_flops
        assert cost.weight_bytes == full.weight_bytes - budget * block_bytes
    # At budget 0 the DiT reads every parameter once.
    with torch.device("meta"):
        dit_params = sum(p.numel() for p in Presto(PAPER).dit.parameters())
    assert full.weight_bytes == 2 * dit_params


@pytest.mark.parametrize("component", ["text_encoder", "dit", "vae_decoder", "stereo"])
def test_flops_grow_with_the_batch(component: str) -> None:
    # The DiT of a dpmpp-2s build runs at 2B: its artifacts' FLOPs are twice those at B.
    one = forward_cost(PAPER, component, 1, 92)
    two = forward_cost(PAPER, component, 2, 92)
    assert two.flops == 2 * one.flops > 0
    if component != "text_encoder":  # the embedding rows gathered grow with the tokens
        assert two.weight_bytes == one.weight_bytes


def test_weight_bytes_are_those_of_the_exported_graph() -> None:
    # Counted on the reference model, they equal the bytes the export form holds (weight norm
    # folded, polyphase upsamplers, fused DiT projections), but for three known differences: the
    # polyphase form repeats each upsampler bias `stride` times, the text encoder reads only
    # the embedding rows its S token ids can gather, the mask-free attention
    # (export/attention.py) pads each head with zero rows and columns and gives q a bias, and
    # its rotary cos/sin tables are constants of the export, not weights (one shared pair:
    # 0.01% of the paper-scale DiT's bytes).
    model = random_model("tiny", 0)
    exported = export_model(model, "bf16")
    modules = {
        "dit": exported.dit,
        "vae_decoder": exported.vae.decoder,
        "stereo": exported.stereo,
        "text_encoder": exported.text_encoder,
    }
    for component, module in modules.items():
        buffers = [t for n, t in module.named_buffers() if not n.endswith(("rope_cos", "rope_sin"))]
        held = sum(t.numel() * t.element_size() for t in [*module.parameters(), *buffers])
        for up in (m for m in module.modules() if isinstance(m, PolyphaseUpsample)):
            held -= (up.stride - 1) * up.out_channels * up.conv.bias.element_size()
        for attn in (m for m in module.modules() if isinstance(m, FusedAttention)):
            padded = attn.qkv.weight.numel() + attn.qkv.bias.numel() + attn.o.weight.numel()
            held -= (padded - 4 * attn.width**2) * attn.qkv.weight.element_size()
        if component == "text_encoder":
            table = module.embed_tokens.weight
            unread = table.shape[0] - min(table.shape[0], model.config.text.max_tokens)
            held -= unread * table.shape[1] * table.element_size()
        assert forward_cost(model, component, precision="bf16").weight_bytes == held, component
    # The mel front end is an fp32 island: its bases stay fp32 in a bf16 graph.
    bf16, fp32 = (forward_cost(model, "stereo", precision=p).weight_bytes for p in ("bf16", "fp32"))
    assert fp32 / 2 < bf16 < fp32


def test_describe_prints_the_same_counts() -> None:
    info = describe(get_preset("small"), 2.0)
    assert (
        info["components"]["dit"]["gflop"] == forward_flops(get_preset("small"), "dit", 1, 92) / 1e9
    )
    assert (
        info["dit_gflop_per_budget"]["4"]
        == forward_flops(get_preset("small"), "dit", 1, 92, 4) / 1e9
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"component": "vocoder"}, "component 'vocoder' is unknown; choose from text_encoder"),
        ({"component": "stereo", "budget": 2}, "budget=2 applies to the dit only"),
        ({"component": "dit", "budget": 4}, "budget=4 is out of range"),
        ({"component": "dit", "batch": 0}, "batch=0 must be an integer >= 1"),
        ({"component": "dit", "frames": 0}, "frames=0 must be an integer >= 1"),
        ({"component": "dit", "precision": "fp8"}, "precision 'fp8' is unknown"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        forward_cost(get_preset("tiny"), **kwargs)
