"""Noise levels, per-step budgets and per-item noise: the runtime's half of presto_ref's sampling.

Both follow the same contracts, so the runtime reproduces the reference's audio for a seed:
sigmas from the Karras schedule (paper eq. 9), the budget of a sigma from the manifest's bands, and
noise drawn per item from a CPU `torch.Generator` seeded with the item's seed, in the order: start
noise, then one draw per re-noising step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from runtime.errors import InputError
from runtime.manifest import SamplerDefaults


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """High-to-low schedule of `num_steps` levels, no trailing 0; one step is [sigma_max]."""
    if num_steps < 1:
        raise InputError(f"steps={num_steps} must be >= 1")
    if rho < 1:
        raise InputError(f"rho={rho} must be >= 1 (paper A.5); use the default 7")
    if num_steps == 1:
        return [float(sigma_max)]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (num_steps - 1) * (lo - hi)) ** rho for i in range(num_steps)]


def budget_for_sigma(sampler: SamplerDefaults, sigma: float) -> int:
    """Blocks the DiT drops at noise level sigma (a sigma on a band edge takes the noisier band)."""
    return sampler.budgets[sum(1 for t in sampler.sigma_thresholds if sigma < t)]


def schedule(
    sampler: SamplerDefaults, num_steps: int | None, rho: float | None
) -> tuple[list[float], list[int]]:
    """(sigmas, budgets) of a request: the manifest's defaults, or recomputed for other steps/rho."""
    if num_steps in (None, sampler.num_steps) and rho in (None, sampler.rho):
        return list(sampler.sigmas), list(sampler.step_budgets)
    sigmas = karras_sigmas(
        sampler.num_steps if num_steps is None else num_steps,
        sampler.sigma_min,
        sampler.sigma_max,
        sampler.rho if rho is None else rho,
    )
    return sigmas, [budget_for_sigma(sampler, s) for s in sigmas]


def draw_noise(seeds: Sequence[int], item_shape: Sequence[int], num_draws: int) -> list[Tensor]:
    """`num_draws` noise tensors (B, *item_shape) float32 on the CPU, item b from seed b's generator."""
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    per_item = [
        [torch.randn(tuple(item_shape), generator=g) for _ in range(num_draws)] for g in generators
    ]
    return [torch.stack([items[k] for items in per_item]) for k in range(num_draws)]
