"""Text conditioning: a byte-level tokenizer and the T5 v1.0 encoder (t5-base size by default).

With no checkpoint, prompts become ByT5-style byte ids (DESIGN.md section 2), so nothing is
downloaded. The encoder is HF `T5EncoderModel` without dropout (Raffel et al. 2020): pre-norm RMS
layer norms, self-attention without 1/sqrt(d) scaling and with a relative position bias computed
once and shared by every layer, a ReLU feed-forward, a final norm. Parameter names map onto HF's:

    embed_tokens                  <- shared (= encoder.embed_tokens)
    relative_attention_bias       <- encoder.block.0.layer.0.SelfAttention.relative_attention_bias
    layers.{i}.attn_norm          <- encoder.block.{i}.layer.0.layer_norm
    layers.{i}.attn.{q,k,v,o}     <- encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}
    layers.{i}.ffn_norm           <- encoder.block.{i}.layer.1.layer_norm
    layers.{i}.ffn.{wi,wo}        <- encoder.block.{i}.layer.1.DenseReluDense.{wi,wo}
    final_layer_norm              <- encoder.final_layer_norm

Shapes: B prompts, S tokens (max_tokens, EOS included), D = d_model, H heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_common.errors import ConfigError, InputError
from presto_common.tokenizer import BYTE_OFFSET, EOS_ID, PAD_ID, encode_bytes  # noqa: F401
from presto_ref.config import TextEncoderConfig
from presto_ref.layers import RMSNorm, randn_like_

# Additive bias on the attention logits of padded keys. Finite, so even a row whose keys are all
# padding gives no NaN; fits fp16 (max 65504) with headroom for the logits and position bias added
# to it; exp(-30000) is exactly 0 in every float format, so padded keys get exactly zero weight.
MASK_BIAS = -30_000.0

# Spread of the random init of norm gains around 1, so a swapped or missing gain changes outputs.
NORM_INIT_NOISE = 0.1


# --- tokenizer ----------------------------------------------------------------------------------


class ByteTokenizer:
    """`presto_common.tokenizer.encode_bytes` with torch tensors out (ByT5 ids, no vocabulary).

    >>> ids, mask = ByteTokenizer(4).encode(["ab"])
    >>> ids.tolist(), mask.tolist()
    ([[100, 101, 1, 0]], [[True, True, True, False]])
    """

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 2:
            raise ConfigError(f"max_tokens={max_tokens} must be >= 2 (one byte and the EOS)")
        self.max_tokens = max_tokens  # tokens per prompt including EOS; the static S of every batch

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids (B, S) int64 and validity mask (B, S) bool, S = max_tokens; never truncates."""
        ids, mask = encode_bytes(prompts, self.max_tokens)
        return torch.from_numpy(ids), torch.from_numpy(mask)


# --- relative positions -------------------------------------------------------------------------


def relative_position_bucket(
    relative_position: Tensor, num_buckets: int, max_distance: int
) -> Tensor:
    """T5's bidirectional bucket of relative positions key - query (HF `_relative_position_bucket`).

    Half the buckets hold keys after the query. Within a half, distances below num_buckets // 4
    have one bucket each; longer ones share log-spaced buckets, and all distances from max_distance
    on share the last. Returns int64 buckets in [0, num_buckets), same shape; as in T5, bucket
    num_buckets // 2 is never produced (distance 0 goes to bucket 0). Torch ops only, so it
    exports; the log is in float32, as in HF, so the bucket edges match.
    """
    half = num_buckets // 2
    max_exact = half // 2
    side = (relative_position > 0).to(torch.long) * half
    distance = relative_position.abs()
    # Clamping keeps log(0) = -inf (whose int64 cast is undefined) out; torch.where below takes
    # the exact branch for every distance the clamp changed.
    distance_f = distance.clamp(min=max_exact).to(torch.float32)
    large = max_exact + (
        torch.log(distance_f / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).to(torch.long)
    large = large.clamp(max=half - 1)
    return side + torch.where(distance < max_exact, distance, large)


# --- encoder ------------------------------------------------------------------------------------


class T5Attention(nn.Module):
    """Multi-head self-attention without bias terms or 1/sqrt(d_kv) logit scaling (T5)."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        inner = cfg.num_heads * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        """x: (B, S, D); attn_bias: (B, H, S, S) additive, in x's dtype. Returns (B, S, D)."""
        q = self.q(x).unflatten(-1, (self.num_heads, self.d_kv)).transpose(1, 2)  # (B, H, S, d_kv)
        k = self.k(x).unflatten(-1, (self.num_heads, self.d_kv)).transpose(1, 2)  # (B, H, S, d_kv)
        v = self.v(x).unflatten(-1, (self.num_heads, self.d_kv)).transpose(1, 2)  # (B, H, S, d_kv)
        # scale=1.0: T5 has no 1/sqrt(d_kv); its init (and training) folds it into q.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1.0)
        return self.o(y.transpose(1, 2).flatten(2))  # (B, S, D)


class T5FeedForward(nn.Module):
    """wo(relu(wi(x))), no biases (T5 v1.0 `DenseReluDense`)."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(F.relu(self.wi(x)))


class T5Layer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)); x: (B, S, D)."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.eps)
        self.attn = T5Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.eps)
        self.ffn = T5FeedForward(cfg)

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), attn_bias)
        return x + self.ffn(self.ffn_norm(x))


class T5Encoder(nn.Module):
    """T5 v1.0 encoder: ids (B, S) -> tokens (B, S, D), zero at padded positions."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg  # TextEncoderConfig checks the bucket maths (num_buckets, max_distance)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.relative_attention_bias = nn.Embedding(cfg.num_buckets, cfg.num_heads)
        self.layers = nn.ModuleList(T5Layer(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.eps)

    def position_bias(self, num_tokens: int, device: torch.device) -> Tensor:
        """Learned bias (1, H, S, S) on the logits of query i and key j, from bucket(j - i)."""
        positions = torch.arange(num_tokens, device=device)
        relative = positions[None, :] - positions[:, None]  # (S, S): key - query
        buckets = relative_position_bucket(relative, self.cfg.num_buckets, self.cfg.max_distance)
        # fp32 like the logits it is added to (and TensorRT-RTX cannot fold a bf16 table lookup).
        table = self.relative_attention_bias.weight.float()  # (num_buckets, H)
        return F.embedding(buckets, table).permute(2, 0, 1)[None]  # (1, H, S, S)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids: (B, S) int64, mask: (B, S) bool (True = real token). Returns (B, S, D)."""
        if ids.shape != mask.shape:
            raise InputError(f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must match")
        x = self.embed_tokens(ids)  # (B, S, D)
        # T5 computes the bias in the first layer and reuses it in all; padded keys are masked.
        key_bias = (~mask).to(torch.float32)[:, None, None, :] * MASK_BIAS  # (B, 1, 1, S)
        attn_bias = (self.position_bias(ids.shape[1], ids.device) + key_bias).to(x.dtype)
        for layer in self.layers:
            x = layer(x, attn_bias)  # (B, S, D)
        x = self.final_layer_norm(x)
        return x * mask[..., None].to(x.dtype)  # (B, S, D)

    def init_random(self, generator: torch.Generator) -> None:
        """Seeded random init of every parameter at HF T5's scales (`T5PreTrainedModel`).

        Norm gains are 1 +- NORM_INIT_NOISE rather than HF's exact 1, so a swapped gain is visible.
        Draws on the CPU, so the values do not depend on the device.
        """
        cfg = self.cfg
        stds = {
            "embed_tokens": 1.0,
            "relative_attention_bias": cfg.d_model**-0.5,
            "q": (cfg.d_model * cfg.d_kv) ** -0.5,
            "k": cfg.d_model**-0.5,
            "v": cfg.d_model**-0.5,
            "o": (cfg.num_heads * cfg.d_kv) ** -0.5,
            "wi": cfg.d_model**-0.5,
            "wo": cfg.d_ff**-0.5,
        }
        for name, param in self.named_parameters():
            owner = name.split(".")[-2]  # "layers.0.attn.q.weight" -> "q"
            if owner.endswith("norm"):
                randn_like_(param, generator, NORM_INIT_NOISE, mean=1.0)
            else:
                assert owner in stds, f"no init scale for parameter {name}"
                randn_like_(param, generator, stds[owner])


def encode_prompts(
    tokenizer: ByteTokenizer, encoder: T5Encoder, prompts: list[str]
) -> tuple[Tensor, Tensor]:
    """Tokenize and encode: tokens (B, S, D) and mask (B, S) bool, on the encoder's device."""
    ids, mask = tokenizer.encode(prompts)
    device = encoder.embed_tokens.weight.device
    ids, mask = ids.to(device), mask.to(device)
    return encoder(ids, mask), mask
