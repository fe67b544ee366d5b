"""A request's noise levels and per-step DiT budgets, from the manifest's sampler defaults.

The rules themselves (the Karras schedule, the sigma-to-budget bands) live in
`presto_common.schedule`, shared with the reference, so the runtime picks the same sigmas and the
same DiT engine per step as `presto_ref` does.
"""

from __future__ import annotations

from presto_common.schedule import budget_for_sigma, karras_sigmas
from runtime.manifest import SamplerDefaults


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
    return sigmas, [budget_for_sigma(sampler.budgets, sampler.sigma_thresholds, s) for s in sigmas]
