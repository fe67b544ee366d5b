"""export/attention.py's rotary tables: the padded attentions read fp32 cos/sin tables made once
at export instead of computing pow, cos and sin per element in every block (CPU).

Run: python -m pytest tests/export/test_rotary_tables.py

The tables hold the same fp32 values the per-block computation makes on the same device (one
rotary_angles, one torch.cos / torch.sin), so on the CPU the DiT's output is bit-identical; what
changes is the graph, which the export test counts.
"""

from __future__ import annotations

import pytest
import torch

from export.attention import attach_rotary_tables
from export.spec import dit_spec, export_model, graph_for
from presto_common.errors import ConfigError
from presto_ref.checkpoint import random_model
from presto_ref.dit import blocks_for_budget


@pytest.fixture(scope="module")
def model():
    return random_model("tiny", 0).eval()


def dit_call(model, frames: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A tiny-DiT call of 2 rows over `frames` latent frames."""
    return dit_spec(model, "fp32", 2, frames, 0).sample_inputs(seed)


def rope_tables(dit) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b.attn.rope_cos, b.attn.rope_sin) for b in dit.blocks]


@pytest.mark.parametrize("budget", [0, 2])
@pytest.mark.parametrize("frames", [None, 100])  # the longest bucket, and a shorter one
def test_tables_give_the_same_dit_output_bit_for_bit(model, budget, frames):
    frames = frames or model.config.max_frames
    inline = export_model(model, "fp32", rope_tables=False)
    tables = export_model(model, "fp32")
    assert all(getattr(b.attn, "rope_cos", None) is None for b in inline.dit.blocks)
    inputs = dit_call(model, frames)
    with torch.no_grad():
        want = graph_for(inline, "dit", budget)(*inputs)
        got = graph_for(tables, "dit", budget)(*inputs)
    assert torch.equal(got, want)


def test_one_fp32_pair_shared_by_every_block_and_kept_out_of_the_weights(model):
    clone = export_model(model, "bf16")
    pairs = rope_tables(clone.dit)
    cos, sin = pairs[0]
    assert all(c is cos and s is sin for c, s in pairs)
    d_pad = clone.dit.blocks[0].attn.padded_head
    assert cos.shape == sin.shape == (model.config.max_frames, d_pad // 2)
    assert cos.dtype == sin.dtype == torch.float32  # attached after the bf16 cast
    # The pad channels (angle 0) rotate by the identity, exactly.
    d = model.config.dit.head_dim
    assert torch.equal(cos[:, d // 2 :], torch.ones_like(cos[:, d // 2 :]))
    assert torch.equal(sin[:, d // 2 :], torch.zeros_like(sin[:, d // 2 :]))
    # Non-persistent: the state dict (what reuse digests and checkpoints hold) is unchanged.
    assert not any("rope_" in k for k in clone.state_dict())
    inline = export_model(model, "bf16", rope_tables=False)
    assert clone.state_dict().keys() == inline.state_dict().keys()


def test_the_exported_graph_computes_no_rotary_cos_or_sin(model):
    # Per block the inline form takes one cos and one sin of the padded angles (q and the audio
    # keys share them); with the tables only the embeddings' cos and sin are left (noise, BPM,
    # budget: the same in both forms).
    frames, budget = 64, 0
    counts = {}
    for rope_tables_on in (False, True):
        clone = export_model(model, "fp32", rope_tables=rope_tables_on)
        spec = dit_spec(clone, "fp32", 2, frames, budget)
        program = torch.export.export(spec.module, spec.sample_inputs(), strict=False)
        targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        counts[rope_tables_on] = sum(t in ("aten.cos.default", "aten.sin.default") for t in targets)
    blocks = len(blocks_for_budget(model.config.dit.num_blocks, budget))
    assert counts[False] - counts[True] == 2 * blocks, counts


def test_tables_too_short_or_cast_are_refused(model):
    clone = export_model(model, "fp32")
    assert attach_rotary_tables(clone.dit, 16) == model.config.dit.num_blocks
    with pytest.raises(ConfigError, match="cannot serve 64 positions"):
        graph_for(clone, "dit", 0)(*dit_call(model, 64))
    attach_rotary_tables(clone.dit, model.config.max_frames)
    clone.dit.blocks[0].attn.rope_cos = clone.dit.blocks[0].attn.rope_cos.bfloat16()
    with pytest.raises(ConfigError, match="after the last dtype cast"):
        graph_for(clone, "dit", 0)(*dit_call(model, 64))


def test_an_unpadded_dit_gets_no_tables(model):
    masked = export_model(model, "fp32", mask_free=False)
    assert attach_rotary_tables(masked.dit, model.config.max_frames) == 0
