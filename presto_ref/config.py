"""Frozen configs for every component, bundled in `PrestoConfig`.

The EDM and sampler configs (with the layer-budget schedule) are defined here; the four networks'
architecture configs are in `presto_ref.network_config` and are importable from here as well.
Each field says its meaning and unit. `__post_init__` checks the invariants and raises `ConfigError`
naming the field, the value and what was expected. Configs round-trip through plain dicts
(`to_dict` / `from_dict`), which is how checkpoints and manifests store them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from presto_common.errors import ConfigError
from presto_common.schedule import budget_for_sigma
from presto_ref.network_config import (
    SAMPLE_RATE,
    DiTConfig,
    StereoConfig,
    TextEncoderConfig,
    VAEConfig,
    _check,
    _positive,
)

# Sigma thresholds between the five noise bands of a budget schedule, highest first.
#
# The paper (section 4.4) drops layers "in terms of decreasing noise level (in quintiles)", following
# ASE's "D3" schedule, which bins DDPM's integer timestep t in [0, 1000) uniformly. A sampler's uniform
# time axis in EDM is the Karras ramp position u in [0, 1], with
#     sigma(u) = (sigma_max^(1/rho) + u * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho   (paper eq. 9),
# so we read "quintiles" as the sigmas at u = 0.2, 0.4, 0.6, 0.8 of the default inference schedule
# (sigma_min 0.002, sigma_max 80, rho 7). They are fixed data: sampling with another rho or step count
# moves the steps, not the bands. The other reading, quintiles of the training distribution
# ln(sigma) ~ N(-0.4, 1.0), would put the bands at 1.55 / 0.86 / 0.52 / 0.29 and give the 4-step
# sampler the budgets [12, 12, 0, 0]; ours gives [12, 8, 0, 0], closer to a per-step spread of the
# schedule's distinct budgets. tests/presto_ref/test_config.py recomputes these from eq. 9.
QUINTILE_SIGMAS = (24.41, 5.839, 0.9654, 0.08509)


# --- EDM -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EDMConfig:
    """EDM/EDM2 hyperparameters (paper appendix A.1, after Karras et al. 2024)."""

    sigma_data: float = 0.5  # standard deviation of the latents
    sigma_min: float = 0.002  # lowest noise level of the inference schedule
    sigma_max: float = 80.0  # highest noise level; sampling starts at sigma_max * noise
    p_mean: float = -0.4  # training noise: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("sigma_data", "sigma_min", "sigma_max", "p_std"):
            _positive(f"edm.{name}", getattr(self, name))
        _check(
            self.sigma_min < self.sigma_max,
            f"edm.sigma_min={self.sigma_min} must be below edm.sigma_max={self.sigma_max}",
        )


# --- sampler and layer budgets --------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetSchedule:
    """Presto-L: how many blocks to drop at each noise level (section 3.3).

    The noise axis is cut into len(budgets) bands by `sigma_thresholds`; band 0 is the highest noise.
    A sigma equal to a threshold falls into the higher-noise band.
    """

    budgets: tuple[int, ...] = (12, 8, 8, 0, 0)  # blocks dropped per band, highest noise first
    sigma_thresholds: tuple[float, ...] = QUINTILE_SIGMAS  # band edges in sigma, descending

    def __post_init__(self) -> None:
        _check(len(self.budgets) >= 1, "budget schedule needs at least one budget")
        _check(all(b >= 0 for b in self.budgets), f"budgets={self.budgets} must be >= 0")
        _check(
            len(self.sigma_thresholds) == len(self.budgets) - 1,
            f"sigma_thresholds={self.sigma_thresholds} must have len(budgets) - 1 = "
            f"{len(self.budgets) - 1} entries",
        )
        _check(
            all(a > b > 0 for a, b in zip(self.sigma_thresholds, self.sigma_thresholds[1:]))
            and all(t > 0 for t in self.sigma_thresholds),
            f"sigma_thresholds={self.sigma_thresholds} must be positive and strictly descending",
        )

    def budget_for_sigma(self, sigma: float) -> int:
        """Blocks to drop when denoising at noise level `sigma` (a Python float)."""
        return budget_for_sigma(self.budgets, self.sigma_thresholds, sigma)

    @property
    def distinct_budgets(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.budgets)))


@dataclass(frozen=True)
class SamplerConfig:
    """Default sampler of a preset; the CLIs can override steps, rho and guidance."""

    kind: Literal["ping-pong", "dpmpp-2s"] = "ping-pong"  # distilled 4-step / base-model solver
    num_steps: int = 4  # generator calls (ping-pong) or solver steps (dpmpp-2s)
    rho: float = 7.0  # Karras schedule exponent; >= 1 (paper A.5)
    cfg_scale: float = 0.8  # CFG++ guidance lambda in [0, 1]; used by dpmpp-2s only
    budgets: BudgetSchedule = field(default_factory=BudgetSchedule)

    def __post_init__(self) -> None:
        _check(
            self.kind in ("ping-pong", "dpmpp-2s"),
            f"sampler.kind={self.kind!r}; expected 'ping-pong' or 'dpmpp-2s'",
        )
        _check(self.num_steps >= 1, f"sampler.num_steps={self.num_steps} must be >= 1")
        _check(self.rho >= 1, f"sampler.rho={self.rho} must be >= 1 (paper A.5)")
        _check(
            0 <= self.cfg_scale <= 1,
            f"sampler.cfg_scale={self.cfg_scale} must be in [0, 1] (CFG++)",
        )


# --- the whole model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrestoConfig:
    """One model: text encoder, DiT, EDM, default sampler, VAE and mono-to-stereo."""

    name: str = "presto-ls"
    sample_rate: int = SAMPLE_RATE  # Hz
    max_duration_s: float = 32.0  # longest request; the paper trains and evaluates on 32 s chunks
    bpm_range: tuple[float, float] = (40.0, 240.0)  # accepted BPM values, inclusive
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    edm: EDMConfig = field(default_factory=EDMConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    stereo: StereoConfig = field(default_factory=StereoConfig)

    def __post_init__(self) -> None:
        _check(
            self.sample_rate == SAMPLE_RATE,
            f"sample_rate={self.sample_rate}; expected {SAMPLE_RATE}",
        )
        _positive("max_duration_s", self.max_duration_s)
        lo, hi = self.bpm_range
        _check(0 < lo < hi, f"bpm_range={self.bpm_range} must be (low, high) with 0 < low < high")
        _check(
            self.dit.latent_channels == self.vae.latent_channels,
            f"dit.latent_channels={self.dit.latent_channels} must equal "
            f"vae.latent_channels={self.vae.latent_channels}",
        )
        _check(
            self.dit.text_width == self.text.d_model,
            f"dit.text_width={self.dit.text_width} must equal text.d_model={self.text.d_model}",
        )
        _check(
            self.vae.hop_length % self.stereo.hop_length == 0,
            f"stereo.hop_length={self.stereo.hop_length} must divide the VAE hop {self.vae.hop_length}",
        )
        worst = max(self.sampler.budgets.budgets)
        _check(
            worst < self.dit.num_blocks,
            f"budget {worst} drops too many blocks: the DiT has {self.dit.num_blocks} and the last "
            f"always runs, so budgets must be <= {self.dit.num_blocks - 1}",
        )
        _check(
            self.max_frames >= 1,
            f"max_duration_s={self.max_duration_s} is shorter than one latent frame",
        )

    # --- durations ---

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame (960 for every preset)."""
        return self.vae.hop_length

    @property
    def max_frames(self) -> int:
        return self.frames_for_duration(self.max_duration_s)

    def frames_for_duration(self, duration_s: float) -> int:
        """Latent frames for a duration: the nearest whole frame (32 s -> 1470 frames)."""
        return round(duration_s * self.sample_rate / self.hop_length)

    def duration_for_frames(self, num_frames: int) -> float:
        """Seconds of audio that `num_frames` latent frames decode to."""
        return num_frames * self.hop_length / self.sample_rate

    # --- serialisation ---

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrestoConfig:
        """Inverse of `to_dict`; unknown or missing keys raise `ConfigError` naming them all."""
        return _from_dict(cls, data, "config")

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the config: equal configs hash equal."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def replace(self, **changes: Any) -> PrestoConfig:
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; expected only {sorted(fields)}")
    missing = sorted(set(fields) - set(data))
    if missing:
        raise ConfigError(
            f"{where} lacks keys {missing}; a config written by to_dict() has them all"
        )
    kwargs = {}
    for name, f in fields.items():
        value = data[name]
        sub = _NESTED.get(f.type) if isinstance(f.type, str) else None
        if sub is not None:
            value = _from_dict(sub, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_NESTED: dict[str, type] = {
    "TextEncoderConfig": TextEncoderConfig,
    "DiTConfig": DiTConfig,
    "EDMConfig": EDMConfig,
    "SamplerConfig": SamplerConfig,
    "BudgetSchedule": BudgetSchedule,
    "VAEConfig": VAEConfig,
    "StereoConfig": StereoConfig,
}
