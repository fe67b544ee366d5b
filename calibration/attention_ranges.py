"""The ranges of each block's attention operands along the sampler's trajectories, for FP8 attention.

ModelOpt calibrates the inputs of Linear layers (recipes.py); FP8 attention (runtime/fp8_attention.py)
also quantizes q and k after the rotary embedding, v, and the attention's output, which no Linear
sees whole. `attention_ranges` runs the reference DiT once more on a budget's recorded calls with
`F.scaled_dot_product_attention` wrapped, and keeps per block the abs-max of

    q  (B, H, T, d)   the audio queries, rotated
    k  (B, H, S, d)   audio keys (rotated) and text keys, the valid ones (the call's key mask)
    v  (B, H, S, d)   likewise
    o  (B, H, T, d)   the attention output, the o projection's input (its ModelOpt input range)

Padded text keys are left out because the attention never reads them, so their values must not
widen the scales. A block that the budget drops never runs and gets no entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calibration.trajectories import DiTCall
from export.quant_scales import AttentionRanges


@contextmanager
def recording_attention(dit: nn.Module) -> Iterator[dict[str, dict[str, float]]]:
    """While active, every attention call of `dit`'s blocks updates the yielded dict
    {"blocks.{i}.attn": {"q_amax": float, ...}}; F.scaled_dot_product_attention is restored after."""
    ranges: dict[str, dict[str, float]] = {}
    current: list[str | None] = [None]  # the attention module whose forward is running
    hooks = [
        block.attn.register_forward_pre_hook(
            lambda _m, _a, name=f"blocks.{i}.attn": current.__setitem__(0, name)
        )
        for i, block in enumerate(dit.blocks)
    ]
    sdpa = F.scaled_dot_product_attention

    def recorded(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, **kw) -> Tensor:
        out = sdpa(q, k, v, attn_mask=attn_mask, **kw)
        name, current[0] = current[0], None
        if name is not None:
            valid = torch.ones(k.shape[2], dtype=torch.bool, device=k.device)
            if attn_mask is not None:  # (B, 1, 1, S) bool: True where a key is read
                valid = attn_mask[:, 0, 0, :]
            keys = valid[:, None, :, None].to(k.dtype)  # (B or 1, 1, S, 1)
            seen = {
                "q_amax": q.abs().amax(),
                "k_amax": (k.abs() * keys).amax(),
                "v_amax": (v.abs() * keys).amax(),
                "o_amax": out.abs().amax(),
            }
            entry = ranges.setdefault(name, dict.fromkeys(seen, 0.0))
            for key, value in seen.items():
                entry[key] = max(entry[key], float(value))
        return out

    F.scaled_dot_product_attention = recorded
    try:
        yield ranges
    finally:
        F.scaled_dot_product_attention = sdpa
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def attention_ranges(denoiser: nn.Module, calls: Sequence[DiTCall]) -> dict[str, AttentionRanges]:
    """Run `denoiser` (presto_ref's EDMPrecond around the DiT) on the calls of one budget and return
    the attention ranges of every block that ran, by attention module name ("blocks.3.attn")."""
    with recording_attention(denoiser.net) as ranges:
        for c in calls:
            denoiser(c.x, c.sigma, text=c.text, text_mask=c.text_mask, bpm=c.bpm, budget=c.budget)
    return {
        name: AttentionRanges(**{k: torch.tensor(v, dtype=torch.float32) for k, v in r.items()})
        for name, r in sorted(ranges.items(), key=lambda kv: int(kv[0].split(".")[1]))
    }
