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


def draw_all(seeds: Sequence[int], item_shape: Sequence[int], num_draws: int) -> list[Tensor]:
    """All `num_draws` draws of a request at once: a list of (B, *item_shape) float32 CPU tensors,
    equal to calling `draw_noise` num_draws times on `make_generators(seeds)`."""
    generators = make_generators(seeds)
    return [draw_noise(generators, item_shape) for _ in range(num_draws)]
