"""The whole reference model: prompt and BPM to 44.1 kHz mono or stereo audio.

`Presto` holds the four components and runs them in stages that can be timed on their own:
`encode_text` -> `sample_latents` -> `decode` -> `to_stereo`. `generate` chains them after
`validate_request` has checked the request. Everything here takes and returns tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from presto_common.errors import InputError
from presto_ref.config import PrestoConfig, SamplerConfig
from presto_ref.dit import DiT
from presto_ref.edm import EDMPrecond, karras_sigmas
from presto_ref.sampling import OnStep, dpmpp_2s_cfgpp, make_generators, ping_pong
from presto_ref.stereo import MonoToStereo
from presto_ref.text import ByteTokenizer, T5Encoder
from presto_ref.vae import VAE

# The checkpoint files, one per module (the VAE file holds the encoder too); the exported graphs
# are `presto_common.names.COMPONENTS`.
CHECKPOINT_PARTS = ("text_encoder", "dit", "vae", "stereo")


@dataclass(frozen=True)
class Request:
    """One generation request; `seeds` has one entry per take (batch item)."""

    prompts: tuple[str, ...]  # one per item
    seeds: tuple[int, ...]  # one per item
    bpm: float = 120.0  # beats per minute, within the config's bpm_range
    duration_s: float = 32.0  # rounded to whole latent frames (960 samples each)
    num_steps: int | None = None  # None: the preset's sampler default
    rho: float | None = None  # None: the preset's default (7)
    cfg_scale: float | None = None  # CFG++ lambda for dpmpp-2s; None: the preset's default
    sampler: str | None = None  # "ping-pong" or "dpmpp-2s"; None: the preset's
    stereo: bool = True
    width: float = 1.0  # stereo width: the gain on the predicted side signal


def validate_request(config: PrestoConfig, request: Request) -> SamplerConfig:
    """Check a request against the model; return the sampler config it resolves to.

    Raises `InputError` / `ConfigError` naming the bad value, what is allowed and the fix.
    """
    if len(request.prompts) != len(request.seeds) or not request.prompts:
        raise InputError(
            f"got {len(request.prompts)} prompts and {len(request.seeds)} seeds; give one seed per prompt"
        )
    lo, hi = config.bpm_range
    if not (math.isfinite(request.bpm) and lo <= request.bpm <= hi):
        raise InputError(f"bpm={request.bpm} is outside [{lo:g}, {hi:g}]; pass a BPM in that range")
    if not (math.isfinite(request.duration_s) and request.duration_s > 0):
        raise InputError(f"duration_s={request.duration_s} must be a positive number of seconds")
    if request.duration_s > config.max_duration_s:
        raise InputError(
            f"duration_s={request.duration_s} exceeds the {config.name} maximum of "
            f"{config.max_duration_s:g} s; ask for at most {config.max_duration_s:g}"
        )
    if config.frames_for_duration(request.duration_s) < 1:
        raise InputError(
            f"duration_s={request.duration_s} is shorter than one latent frame "
            f"({config.hop_length / config.sample_rate * 1000:.1f} ms); ask for more"
        )
    if not math.isfinite(request.width):
        raise InputError(
            f"width={request.width} must be a finite number (1.0 is the model's width)"
        )
    base = config.sampler
    return SamplerConfig(
        kind=request.sampler or base.kind,
        num_steps=base.num_steps if request.num_steps is None else request.num_steps,
        rho=base.rho if request.rho is None else request.rho,
        cfg_scale=base.cfg_scale if request.cfg_scale is None else request.cfg_scale,
        budgets=base.budgets,
    )


class Presto(nn.Module):
    """Text encoder, DiT (with EDM preconditioning), VAE and mono-to-stereo of one config."""

    def __init__(self, config: PrestoConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = ByteTokenizer(config.text.max_tokens)
        self.text_encoder = T5Encoder(config.text)
        self.dit = DiT(config.dit)
        self.vae = VAE(config.vae)
        self.stereo = MonoToStereo(config.stereo, config.sample_rate)
        self.denoiser = EDMPrecond(self.dit, config.edm.sigma_data)

    def init_random(self, seed: int) -> Presto:
        """Seeded random weights for every component (each from its own generator, CPU-drawn)."""
        for offset, name in enumerate(CHECKPOINT_PARTS):
            getattr(self, name).init_random(torch.Generator().manual_seed(seed * 1000 + offset))
        return self

    @property
    def device(self) -> torch.device:
        return self.dit.proj_in.weight.device

    # --- stages ---

    def encode_text(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> T5 tokens (B, S, D_text) and mask (B, S) bool, S = config.text.max_tokens."""
        ids, mask = self.tokenizer.encode(list(prompts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.text_encoder(ids, mask), mask

    def denoise(
        self, x: Tensor, sigma: float, text: Tensor, text_mask: Tensor, bpm: Tensor, budget: int
    ) -> Tensor:
        """D(x; sigma) for latents x: (B, C_lat, T_lat) at one noise level; float32 out."""
        sigmas = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
        return self.denoiser(x, sigmas, text=text, text_mask=text_mask, bpm=bpm, budget=budget)

    def sample_latents(
        self,
        text: Tensor,
        text_mask: Tensor,
        bpm: Tensor,
        seeds: Sequence[int],
        num_frames: int,
        sampler: SamplerConfig,
        on_step: OnStep | None = None,
    ) -> Tensor:
        """Run the sampler; returns latents (B, C_lat, T_lat) float32."""
        edm = self.config.edm
        sigmas = karras_sigmas(sampler.num_steps, edm.sigma_min, edm.sigma_max, sampler.rho)
        budget_for = sampler.budgets.budget_for_sigma
        shape = (self.config.dit.latent_channels, num_frames)
        generators = make_generators(seeds)
        if sampler.kind == "ping-pong":

            def generate_x0(x: Tensor, sigma: float) -> Tensor:
                return self.denoise(x, sigma, text, text_mask, bpm, budget_for(sigma))

            return ping_pong(
                generate_x0,
                sigmas,
                generators=generators,
                item_shape=shape,
                device=self.device,
                on_step=on_step,
            )

        # The null condition for CFG is "no text": every text token masked, same BPM.
        null_mask = torch.zeros_like(text_mask)

        def guided(x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
            both = self.denoise(
                torch.cat([x, x]),
                sigma,
                torch.cat([text, text]),
                torch.cat([text_mask, null_mask]),
                torch.cat([bpm, bpm]),
                budget_for(sigma),
            )
            return both.chunk(2)

        return dpmpp_2s_cfgpp(
            guided,
            sigmas,
            guidance=sampler.cfg_scale,
            generators=generators,
            item_shape=shape,
            device=self.device,
            on_step=on_step,
        )

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, C_lat, T_lat) -> mono audio (B, 1, T_lat * 960) float32 in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latents.to(dtype)).float()

    def to_stereo(self, mono: Tensor, width: float | Tensor = 1.0) -> Tensor:
        """Mono (B, 1, T) -> stereo (B, 2, T) float32; (left + right) / 2 equals the input mono."""
        dtype = next(self.stereo.parameters()).dtype
        return self.stereo(mono.to(dtype), width).float()

    # --- everything ---

    @torch.no_grad()
    def generate(self, request: Request, on_step: OnStep | None = None) -> Tensor:
        """Audio (B, 2 or 1, T) float32 at config.sample_rate for a validated request."""
        sampler = validate_request(self.config, request)
        num_frames = self.config.frames_for_duration(request.duration_s)
        text, mask = self.encode_text(request.prompts)
        bpm = torch.full((len(request.prompts),), float(request.bpm), device=self.device)
        latents = self.sample_latents(text, mask, bpm, request.seeds, num_frames, sampler, on_step)
        mono = self.decode(latents)
        return self.to_stereo(mono, request.width) if request.stereo else mono
