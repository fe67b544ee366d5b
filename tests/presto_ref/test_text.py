"""Byte tokenizer and T5 encoder: ids, bucket maths, padding invariance, init, scale.

Run: python -m pytest tests/presto_ref/test_text.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from presto_common.errors import InputError
from presto_ref.config import TextEncoderConfig
from presto_ref.presets import PRESETS
from presto_ref.text import (
    EOS_ID,
    MASK_BIAS,
    PAD_ID,
    ByteTokenizer,
    T5Encoder,
    encode_prompts,
    relative_position_bucket,
)

TINY = PRESETS["tiny"].text
PROMPTS = ["lo-fi hip hop, 80 BPM", "é", "an orchestral film score with soaring strings and brass"]


def make_encoder(cfg: TextEncoderConfig = TINY, seed: int = 0) -> T5Encoder:
    encoder = T5Encoder(cfg)
    encoder.init_random(torch.Generator().manual_seed(seed))
    return encoder


# --- tokenizer ----------------------------------------------------------------------------------


def test_ascii_ids_and_mask() -> None:
    ids, mask = ByteTokenizer(8).encode(["ab"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [[100, 101, 1, 0, 0, 0, 0, 0]]  # ord("a") = 97, + 3
    assert mask.tolist() == [[True, True, True, False, False, False, False, False]]


def test_shape_is_always_max_tokens() -> None:
    ids, mask = ByteTokenizer(16).encode(["a", "bcd"])
    assert ids.shape == mask.shape == (2, 16)
    assert mask.sum(1).tolist() == [2, 4]


def test_multibyte_utf8() -> None:
    ids, mask = ByteTokenizer(6).encode(["é"])  # U+00E9 is C3 A9 in UTF-8
    assert ids.tolist() == [[0xC3 + 3, 0xA9 + 3, EOS_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert mask.sum().item() == 3


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_raises(prompt: str) -> None:
    with pytest.raises(InputError, match=r"prompt 1 is .* empty; describe the music"):
        ByteTokenizer(8).encode(["ok", prompt])


def test_no_prompts_raises() -> None:
    with pytest.raises(InputError, match="non-empty list"):
        ByteTokenizer(8).encode([])


def test_overlong_prompt_raises_with_length_and_limit() -> None:
    with pytest.raises(InputError, match=r"prompt 0 is 8 UTF-8 bytes, but at most 7 fit.*shorten"):
        ByteTokenizer(8).encode(["abcdefgh"])
    # Multibyte characters count by bytes: 4 x 2 bytes = 8 > 7.
    with pytest.raises(InputError, match="is 8 UTF-8 bytes"):
        ByteTokenizer(8).encode(["éééé"])


def test_prompt_of_max_tokens_minus_one_bytes_fits() -> None:
    ids, mask = ByteTokenizer(8).encode(["abcdefg"])
    assert mask.all()
    assert ids[0, -1].item() == EOS_ID


# --- relative position buckets ------------------------------------------------------------------


def python_bucket(relative: int, num_buckets: int, max_distance: int) -> int:
    """T5's bidirectional bucket (Mesh TF / HF `_relative_position_bucket`) in plain Python."""
    half = num_buckets // 2
    bucket = half if relative > 0 else 0
    n = abs(relative)
    max_exact = half // 2
    if n < max_exact:
        return bucket + n
    log_bucket = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    )
    return bucket + min(log_bucket, half - 1)


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 20), (64, 256)])
def test_buckets_match_python_reference(num_buckets: int, max_distance: int) -> None:
    positions = torch.arange(300)
    relative = positions[None, :] - positions[:, None]  # key - query
    got = relative_position_bucket(relative, num_buckets, max_distance)
    assert got.dtype == torch.long
    want = torch.tensor(
        [[python_bucket(r, num_buckets, max_distance) for r in row] for row in relative.tolist()]
    )
    mismatch = (got != want).nonzero()
    assert mismatch.numel() == 0, f"first mismatches (query, key): {mismatch[:5].tolist()}"


def test_bucket_properties() -> None:
    relative = torch.arange(-1000, 1001)
    buckets = relative_position_bucket(relative, 32, 128)
    assert buckets[relative == 0].item() == 0
    assert (buckets[relative < 0] < 16).all() and (buckets[relative > 0] >= 16).all()
    assert buckets[relative == 5].item() == 16 + 5 and buckets[relative == -5].item() == 5
    assert buckets[relative >= 128].eq(31).all() and buckets[relative <= -128].eq(15).all()
    # Bucket 16 (the "after" half at distance 0) is never used: distance 0 goes to bucket 0. This
    # is T5's behaviour too, so a t5-base checkpoint's row 16 of the bias table is dead.
    assert set(buckets.tolist()) == set(range(32)) - {16}


# --- encoder ------------------------------------------------------------------------------------


def test_padding_and_batch_invariance() -> None:
    encoder = make_encoder()
    tokenizer = ByteTokenizer(TINY.max_tokens)
    prompt = "jazz trio"
    n = len(prompt) + 1  # bytes + EOS
    with torch.no_grad():
        alone, mask = encode_prompts(tokenizer, encoder, [prompt])
        batch, _ = encode_prompts(tokenizer, encoder, [PROMPTS[2], prompt])
        ids, short_mask = tokenizer.encode([prompt])
        short = encoder(ids[:, : n + 2], short_mask[:, : n + 2])  # 2 pads instead of 118
    # Masked keys get exactly zero weight; what remains is fp32 summation-order noise.
    torch.testing.assert_close(batch[1, :n], alone[0, :n], rtol=0, atol=1e-6)
    torch.testing.assert_close(short[0, :n], alone[0, :n], rtol=0, atol=1e-6)
    assert alone[0, n:].eq(0).all() and batch[1, n:].eq(0).all() and short[0, n:].eq(0).all()
    assert mask.sum().item() == n


def naive_t5(encoder: T5Encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Independent T5 encoder forward: explicit softmax, python buckets of key j - query i."""
    cfg = encoder.cfg
    num_tokens = ids.shape[1]
    buckets = torch.tensor(
        [
            [python_bucket(j - i, cfg.num_buckets, cfg.max_distance) for j in range(num_tokens)]
            for i in range(num_tokens)
        ]
    )
    bias = encoder.relative_attention_bias.weight[buckets].permute(2, 0, 1)  # (H, S_q, S_k)

    def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * x / x.pow(2).mean(-1, keepdim=True).add(cfg.eps).sqrt()

    def heads(x: torch.Tensor) -> torch.Tensor:  # (B, S, H * d_kv) -> (B, H, S, d_kv)
        return x.reshape(x.shape[0], num_tokens, cfg.num_heads, cfg.d_kv).transpose(1, 2)

    x = encoder.embed_tokens.weight[ids]
    for layer in encoder.layers:
        h = rms_norm(x, layer.attn_norm.weight)
        q, k, v = (heads(h @ w.weight.T) for w in (layer.attn.q, layer.attn.k, layer.attn.v))
        scores = q @ k.transpose(-1, -2) + bias  # no 1/sqrt(d_kv), as T5
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], num_tokens, -1)
        x = x + y @ layer.attn.o.weight.T
        h = rms_norm(x, layer.ffn_norm.weight)
        x = x + torch.relu(h @ layer.ffn.wi.weight.T) @ layer.ffn.wo.weight.T
    return rms_norm(x, encoder.final_layer_norm.weight) * mask[..., None]


def test_matches_naive_t5() -> None:
    encoder = make_encoder()
    ids, mask = ByteTokenizer(TINY.max_tokens).encode(PROMPTS)
    with torch.no_grad():
        got, want = encoder(ids, mask), naive_t5(encoder, ids, mask)
    # Same maths in fp32, different op order (SDPA kernels): differences are rounding only.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_attention_is_unscaled_and_positional() -> None:
    """A permutation of the prompt's bytes changes the outputs (the position bias matters)."""
    encoder = make_encoder()
    tokenizer = ByteTokenizer(TINY.max_tokens)
    with torch.no_grad():
        out, _ = encode_prompts(tokenizer, encoder, ["abab", "baba"])
    assert not torch.allclose(out[0, :4], out[1, [1, 0, 3, 2]], atol=1e-3)


def test_init_is_complete_and_seeded() -> None:
    a, b, c = make_encoder(seed=0), make_encoder(seed=0), make_encoder(seed=1)
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert pa.ne(0).all(), f"{name} has zeros after init"
        assert torch.equal(pa, pb), f"{name} differs for the same seed"
        assert not torch.equal(pa, pc), f"{name} is equal for different seeds"
    norm = a.layers[0].attn_norm.weight
    assert 0.05 < norm.std().item() < 0.2 and abs(norm.mean().item() - 1) < 0.1


def test_init_scales_follow_hf_t5() -> None:
    encoder = make_encoder(TextEncoderConfig(vocab_size=300, d_model=64, num_layers=1, d_ff=256))
    attn, ffn = encoder.layers[0].attn, encoder.layers[0].ffn
    expected = {  # HF T5PreTrainedModel._init_weights with factor 1
        "q": (attn.q.weight, (64 * 64) ** -0.5),
        "k": (attn.k.weight, 64**-0.5),
        "o": (attn.o.weight, (12 * 64) ** -0.5),
        "wi": (ffn.wi.weight, 64**-0.5),
        "wo": (ffn.wo.weight, 256**-0.5),
        "embed": (encoder.embed_tokens.weight, 1.0),
    }
    for name, (weight, std) in expected.items():
        assert abs(weight.std().item() / std - 1) < 0.05, f"{name}: std {weight.std().item()}"


def test_every_parameter_gets_a_gradient() -> None:
    encoder = make_encoder()
    # A prompt of over 90 bytes reaches the last bucket of each half (distances >= 91).
    prompts = [*PROMPTS, "a" * 100]
    tokens, _ = encode_prompts(ByteTokenizer(TINY.max_tokens), encoder, prompts)
    weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
    (tokens * weights).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    used = encoder.relative_attention_bias.weight.grad.abs().sum(1).gt(0)
    assert used.tolist() == [i != 16 for i in range(32)], "a reachable bucket got no gradient"


def test_output_is_finite_with_sane_rms() -> None:
    encoder = make_encoder()
    hidden: list[torch.Tensor] = []
    for layer in encoder.layers:
        layer.register_forward_hook(lambda module, args, out: hidden.append(out))
    with torch.no_grad():
        tokens, mask = encode_prompts(ByteTokenizer(TINY.max_tokens), encoder, PROMPTS)
    assert tokens.shape == (3, TINY.max_tokens, TINY.d_model) and tokens.isfinite().all()
    rms = tokens[mask].pow(2).mean(-1).sqrt()
    # The final norm brings each token to RMS ~ its gain, 1 +- 10% at init.
    assert rms.min() > 0.7 and rms.max() < 1.3, f"token RMS in [{rms.min()}, {rms.max()}]"
    for i, h in enumerate(hidden):
        layer_rms = h[mask].pow(2).mean(-1).sqrt()
        assert 0.3 < layer_rms.min() and layer_rms.max() < 10, f"layer {i} RMS out of range"


def test_fully_masked_row_is_finite() -> None:
    """A row with no valid key stays NaN-free, also in fp16 engines.

    torch's SDPA returns 0 for an all -inf row, but ONNX Softmax (and so TensorRT) gives NaN, hence
    a finite bias that fp16 can represent with room for the logits added to it.
    """
    assert math.isfinite(MASK_BIAS) and MASK_BIAS / 2 > torch.finfo(torch.float16).min
    assert math.exp(MASK_BIAS) == 0.0  # padded keys still get exactly zero weight
    encoder = make_encoder()
    with torch.no_grad():
        out = encoder(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.bool))
    assert out.eq(0).all()


def test_shape_mismatch_raises() -> None:
    encoder = make_encoder()
    with pytest.raises(InputError, match="must match"):
        encoder(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))


def test_t5_base_parameter_count() -> None:
    cfg = TextEncoderConfig()
    with torch.device("meta"):
        encoder = T5Encoder(cfg)
    per_layer = 4 * 768 * 768 + 2 * 768 * 3072 + 2 * 768  # q, k, v, o; wi, wo; two norms
    expected = 32_128 * 768 + 12 * per_layer + 32 * 12 + 768  # embed, layers, rel. bias, final norm
    # HF T5EncoderModel.from_pretrained("t5-base").num_parameters() counts the shared embedding
    # once, as we do, so the totals are equal.
    assert expected == 109_628_544
    assert sum(p.numel() for p in encoder.parameters()) == expected
    ids = torch.zeros(2, cfg.max_tokens, dtype=torch.long, device="meta")
    out = encoder(ids, torch.ones(2, cfg.max_tokens, dtype=torch.bool, device="meta"))
    assert out.shape == (2, 128, 768)
