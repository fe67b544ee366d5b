"""The DiT's inputs along the reference sampler's own trajectories, grouped by layer budget.

Calibration must see what each engine sees: the DiT's activations depend on sigma (through c_in x
and the noise embedding) and on the budget (which blocks run), so the inputs are recorded while
`presto_ref.pipeline.Presto.sample_latents` runs its schedule, one record per evaluation of
D(x; sigma), and each budget's engine is later calibrated on its own records only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from presto_common.errors import ConfigError, InputError
from presto_ref.pipeline import Presto, Request, validate_request

PROMPTS_FILE = Path(__file__).with_name("prompts.txt")  # the shipped calibration prompts


@dataclass(frozen=True)
class DiTCall:
    """The inputs of one evaluation of D(x; sigma) (the exported DiT graph's inputs, plus budget)."""

    x: Tensor  # (B, C_lat, T_lat) noisy latents, float32
    sigma: Tensor  # (B,) noise levels
    text: Tensor  # (B, S, D_text) T5 tokens
    text_mask: Tensor  # (B, S) bool, True for real tokens
    bpm: Tensor  # (B,) beats per minute
    budget: int  # blocks dropped (Presto-L)

    def feeds(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The DiT graph's inputs in export order: x, sigma, text, text_mask, bpm."""
        return self.x, self.sigma, self.text, self.text_mask, self.bpm


def read_prompts(path: Path) -> tuple[str, ...]:
    """Non-empty lines of a UTF-8 text file, without `#` comment lines; InputError if none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(
            f"--prompts {path} cannot be read ({err}); pass a UTF-8 text file, one prompt a line"
        ) from None
    prompts = tuple(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))
    if not prompts:
        raise InputError(f"--prompts {path} holds no prompts; write one prompt per line")
    return prompts


def calibration_bpms(bpm_range: tuple[float, float], num_prompts: int) -> tuple[float, ...]:
    """One BPM per prompt, spread evenly over the model's range (bin centres), so the BPM embedding
    is calibrated across the range rather than at one tempo.

    >>> calibration_bpms((40.0, 240.0), 4)
    (65.0, 115.0, 165.0, 215.0)
    """
    lo, hi = bpm_range
    return tuple(lo + (hi - lo) * (i + 0.5) / num_prompts for i in range(num_prompts))


@torch.no_grad()
def record_dit_calls(
    model: Presto,
    prompts: Sequence[str],
    seeds: Sequence[int],
    duration_s: float,
) -> list[DiTCall]:
    """Run the model's own sampler for every prompt (one batch of len(seeds) takes per prompt) and
    record the inputs of every DiT evaluation, in order. Latents are discarded; nothing is decoded.
    """
    if not seeds:
        raise ConfigError("no seeds given; calibration needs at least one seed per prompt")
    calls: list[DiTCall] = []

    def record(_module, args, kwargs) -> None:
        x, sigma = args
        calls.append(
            DiTCall(
                x=x.detach().clone(),
                sigma=sigma.detach().clone(),
                text=kwargs["text"].detach().clone(),
                text_mask=kwargs["text_mask"].detach().clone(),
                bpm=kwargs["bpm"].detach().clone(),
                budget=int(kwargs["budget"]),
            )
        )

    bpms = calibration_bpms(model.config.bpm_range, len(prompts))
    num_frames = model.config.frames_for_duration(duration_s)
    handle = model.denoiser.register_forward_pre_hook(record, with_kwargs=True)
    try:
        for prompt, bpm in zip(prompts, bpms):
            request = Request(
                prompts=(prompt,) * len(seeds),
                seeds=tuple(seeds),
                bpm=bpm,
                duration_s=duration_s,
                stereo=False,
            )
            sampler = validate_request(model.config, request)
            text, mask = model.encode_text(request.prompts)
            bpm_t = torch.full((len(seeds),), bpm, device=model.device)
            model.sample_latents(text, mask, bpm_t, request.seeds, num_frames, sampler)
    finally:
        handle.remove()
    return calls


def group_by_budget(calls: Sequence[DiTCall]) -> dict[int, list[DiTCall]]:
    """Records per budget, budgets ascending, records in sampling order."""
    groups: dict[int, list[DiTCall]] = {}
    for call in calls:
        groups.setdefault(call.budget, []).append(call)
    return dict(sorted(groups.items()))
