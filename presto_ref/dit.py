"""The Presto diffusion transformer F with Presto-L layer budgets (paper section 3.3, appendix A.1).

Audio tokens are latent frames. Each block is one attention then one SwiGLU feed-forward (Llama
style: RMSNorm, no biases, rotary positions on audio tokens), modulated by adaLN from the conditioning
vector c = emb(c_noise) + emb(BPM) + emb(budget). Queries come from audio tokens only; keys and values
from [audio tokens; projected T5 tokens], with padded text tokens masked out.

A budget b drops b blocks starting from the second-to-last and going backwards; the last block always
runs. After the blocks, one extra adaLN conditioned only on the budget rescales the hidden state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presto_common.errors import ConfigError
from presto_ref.config import DiTConfig
from presto_ref.layers import (
    RMSNorm,
    ScalarEmbedder,
    apply_rotary,
    modulate,
    randn_like_,
    rotary_angles,
)


def blocks_for_budget(num_blocks: int, budget: int) -> tuple[int, ...]:
    """Indices of the blocks that run under `budget`, in execution order.

    >>> blocks_for_budget(6, 0), blocks_for_budget(6, 2), blocks_for_budget(6, 5)
    ((0, 1, 2, 3, 4, 5), (0, 1, 2, 5), (5,))
    """
    if not 0 <= budget < num_blocks:
        raise ConfigError(
            f"budget={budget} is out of range: the DiT has {num_blocks} blocks and the last always "
            f"runs, so a budget is 0..{num_blocks - 1}"
        )
    return tuple(range(num_blocks - 1 - budget)) + (num_blocks - 1,)


# --- block --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Audio queries over [audio; text] keys and values; rotary positions on audio q and k only."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)

    def forward(self, a: Tensor, text: Tensor, angles: Tensor, key_mask: Tensor) -> Tensor:
        """a: (B, T, D) audio, text: (B, S, D), angles: (T, d/2), key_mask: (B, 1, 1, T + S) bool."""
        B, T, D = a.shape
        kv_in = torch.cat([a, text], dim=1)  # (B, T + S, D)

        def heads(t: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, d)
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.q(a)), heads(self.k(kv_in)), heads(self.v(kv_in))
        q = apply_rotary(q, angles)
        k = torch.cat(
            [apply_rotary(k[:, :, :T], angles), k[:, :, T:]], dim=2
        )  # text keys unrotated
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, T, d)
        return self.o(out.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases (Llama)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class DiTBlock(nn.Module):
    """h + gate1 * Attn(adaLN(h)); then h + gate2 * FFN(adaLN(h)), six modulations from c (DiT)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.width, cfg.norm_eps, affine=False)
        self.attn = Attention(cfg.width, cfg.num_heads)
        self.norm2 = RMSNorm(cfg.width, cfg.norm_eps, affine=False)
        self.ffn = SwiGLU(cfg.width, cfg.ffn_hidden)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 6 * cfg.width))

    def forward(
        self, h: Tensor, text: Tensor, c: Tensor, angles: Tensor, key_mask: Tensor
    ) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # (B, D) each
        h = h + gate1[:, None] * self.attn(
            modulate(self.norm1(h), shift1, scale1), text, angles, key_mask
        )
        h = h + gate2[:, None] * self.ffn(modulate(self.norm2(h), shift2, scale2))
        return h


# --- model --------------------------------------------------------------------------------------


class DiT(nn.Module):
    """The network F of D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (see edm.EDMPrecond)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.width
        self.proj_in = nn.Linear(cfg.latent_channels, D)
        self.text_proj = nn.Linear(cfg.text_width, D)
        self.text_norm = RMSNorm(D, cfg.norm_eps)
        self.noise_embed = ScalarEmbedder(cfg.freq_dim, D, scale=cfg.noise_embed_scale)
        self.bpm_embed = ScalarEmbedder(cfg.freq_dim, D)  # BPM enters as a plain scalar (A.1)
        self.budget_embed = ScalarEmbedder(cfg.freq_dim, D)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_blocks))
        # Presto-L's extra adaLN after the blocks, conditioned on the budget alone.
        self.budget_norm = RMSNorm(D, cfg.norm_eps, affine=False)
        self.budget_ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        # DiT's final layer: norm, adaLN from c, linear back to the latent channels.
        self.final_norm = RMSNorm(D, cfg.norm_eps, affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.proj_out = nn.Linear(D, cfg.latent_channels)

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        text: Tensor,
        text_mask: Tensor,
        bpm: Tensor,
        budget: int = 0,
    ) -> Tensor:
        """F(x_in; c_noise, text, BPM, budget).

        x: (B, C_lat, T_lat) preconditioned latents; c_noise: (B,) = ln(sigma) / 4;
        text: (B, S, D_text) T5 tokens; text_mask: (B, S) bool, True for real tokens;
        bpm: (B,) beats per minute; budget: blocks to drop (a Python int, fixed per exported graph).
        Returns (B, C_lat, T_lat) in the dtype of the weights.
        """
        order = blocks_for_budget(self.cfg.num_blocks, budget)
        B, _, T = x.shape
        dtype = self.proj_in.weight.dtype
        h = self.proj_in(x.transpose(1, 2).to(dtype))  # (B, T, D)
        ctx = self.text_norm(self.text_proj(text.to(dtype)))  # (B, S, D)
        e_budget = self.budget_embed(torch.full((B,), float(budget), device=x.device))  # (B, D)
        c = self.noise_embed(c_noise) + self.bpm_embed(bpm) + e_budget  # (B, D)
        angles = rotary_angles(T, self.cfg.head_dim, self.cfg.rope_theta, x.device)  # (T, d/2)
        audio_keys = torch.ones(B, T, dtype=torch.bool, device=x.device)
        key_mask = torch.cat([audio_keys, text_mask.bool()], dim=1)[
            :, None, None
        ]  # (B, 1, 1, T + S)
        for i in order:
            h = self.blocks[i](h, ctx, c, angles, key_mask)
        shift, scale = self.budget_ada(e_budget).chunk(2, dim=-1)
        h = modulate(self.budget_norm(h), shift, scale)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        h = self.proj_out(modulate(self.final_norm(h), shift, scale))  # (B, T, C_lat)
        return h.transpose(1, 2)

    # --- random init ---

    def init_random(self, generator: torch.Generator, modulation_std: float = 0.3) -> None:
        """Seeded init that exercises every weight (no adaLN-Zero) with activations kept in range.

        Matrices are N(0, 1/fan_in), so each projection keeps unit variance; biases are N(0, 0.02^2).
        adaLN layers are scaled so that shift, scale and gate come out around `modulation_std`: each
        gated branch then adds about modulation_std^2 of variance to the residual stream, which grows
        mildly with depth instead of staying flat (zero gates) or exploding (unit gates).
        """
        modulation_layers = {id(m[1]) for m in self._ada_layers()}
        for module in self.modules():
            if not isinstance(module, nn.Linear):
                continue
            fan_in = module.in_features
            # SiLU(c) with c of unit variance has a mean square of about 0.36; dividing it out puts
            # the modulations at modulation_std.
            std = (
                modulation_std / (0.6 * fan_in**0.5)
                if id(module) in modulation_layers
                else fan_in**-0.5
            )
            randn_like_(module.weight, generator, std)
            if module.bias is not None:
                randn_like_(module.bias, generator, 0.02)
        randn_like_(self.text_norm.weight, generator, 0.1, mean=1.0)

    def _ada_layers(self) -> list[nn.Sequential]:
        return [b.ada for b in self.blocks] + [self.budget_ada, self.final_ada]
