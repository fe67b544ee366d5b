"""The per-take noise rule: how a seed becomes the noise of one take, at any batch size.

Take b owns one `torch.Generator` on the CPU seeded with its own seed. A sampler draws from it, in
order, the starting noise and then one tensor per later draw (ping-pong: one per re-noising step),
each `torch.randn(item_shape, generator=g_b, dtype=float32)`, and moves it to the device. A take
therefore depends on its seed only, never on the batch it ran in, and the runtime reproduces the
reference's noise bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from presto_common.errors import InputError

# torch.Generator.manual_seed takes any integer in [-2**63, 2**64); seeds are the non-negative
# part of it that every language's int64 holds, so a seed written by a client is read back intact.
SEED_MAX = 2**63 - 1


def check_seed(seed: object) -> int:
    """`seed` as an int in [0, SEED_MAX]; InputError naming the value otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed={seed!r} must be an integer in [0, 2**63 - 1]; e.g. --seed 0")
    return seed


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per take, seeded with that take's seed."""
    return [torch.Generator(device="cpu").manual_seed(check_seed(int(s))) for s in seeds]


def draw_noise(
    generators: Sequence[torch.Generator],
    item_shape: Sequence[int],
    device: torch.device | str = "cpu",
) -> Tensor:
    """The next draw: standard normal noise (B, *item_shape) float32, take b from generators[b]."""
    noise = [torch.randn(tuple(item_shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(noise).to(device)


def fill_draws(seeds: Sequence[int], out: Tensor) -> Tensor:
    """Write every draw of a request into `out`, a (num_draws, B, *item_shape) float32 CPU tensor
    (pinned memory, for one copy to the device): out[d] equals the d-th `draw_noise` on
    `make_generators(seeds)`. Each take's draw is generated in place, in order, so no stacking or
    temporary tensor is involved: only the generators' own serial work, never a parallel CPU
    kernel, whose thread team stalls when other processes hold the cores (on the two-H200 machine a
    batch-8 request's draws took 13 ms alone and 290 ms beside a second GPU's process)."""
    if out.dim() < 2 or out.shape[1] != len(seeds) or out.dtype != torch.float32:
        raise InputError(
            f"out has shape {tuple(out.shape)} and dtype {out.dtype}; expected float32 "
            f"(num_draws, {len(seeds)}, *item_shape): one row per seed"
        )
    generators = make_generators(seeds)
    for draw in out:
        for row, g in zip(draw, generators, strict=True):
            torch.randn(row.shape, generator=g, dtype=torch.float32, out=row)
    return out


def draw_all(seeds: Sequence[int], item_shape: Sequence[int], num_draws: int) -> list[Tensor]:
    """All `num_draws` draws of a request at once: a list of (B, *item_shape) float32 CPU tensors,
    equal to calling `draw_noise` num_draws times on `make_generators(seeds)`."""
    out = torch.empty((num_draws, len(seeds), *item_shape), dtype=torch.float32)
    return list(fill_draws(seeds, out).unbind(0))
