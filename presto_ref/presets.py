"""Named model configs. `presto-ls` is the paper-scale default; `small` and `tiny` keep every feature.

The small presets still have several blocks, at least two distinct layer budgets, text, BPM and stereo,
so every code path that the paper-scale model takes is exercised by the CPU tests.
"""

from __future__ import annotations

from presto_common.errors import ConfigError
from presto_ref.config import (
    BudgetSchedule,
    DiTConfig,
    PrestoConfig,
    SamplerConfig,
    StereoConfig,
    TextEncoderConfig,
    VAEConfig,
)

PRESTO_LS_BUDGETS = (
    12,
    8,
    8,
    0,
    0,
)  # Presto-LS, reduced for step-distillation stability (section 4.6)
PRESTO_L_BUDGETS = (14, 12, 8, 4, 0)  # Presto-L / ASE "D3" (section 4.4)

PRESETS: dict[str, PrestoConfig] = {
    # Presto-LS: the layer- and step-distilled 4-step generator at paper scale.
    "presto-ls": PrestoConfig(
        name="presto-ls",
        sampler=SamplerConfig(
            kind="ping-pong", num_steps=4, budgets=BudgetSchedule(PRESTO_LS_BUDGETS)
        ),
    ),
    # Presto-L: the base score model with layer budgets, sampled with DPM-Solver++(2S) and CFG++.
    # 20 steps x 2 evaluations x (conditional + unconditional) = 80 DiT passes, the base model's cost.
    "presto-l": PrestoConfig(
        name="presto-l",
        sampler=SamplerConfig(
            kind="dpmpp-2s", num_steps=20, cfg_scale=0.8, budgets=BudgetSchedule(PRESTO_L_BUDGETS)
        ),
    ),
    # A demo-sized Presto-LS: every feature, seconds of audio in seconds on a GPU, a minute on a CPU.
    "small": PrestoConfig(
        name="small",
        max_duration_s=32.0,
        text=TextEncoderConfig(
            vocab_size=384, d_model=256, num_layers=4, num_heads=4, d_kv=64, d_ff=1024
        ),
        dit=DiTConfig(num_blocks=8, width=384, num_heads=6, ffn_hidden=1024, text_width=256),
        sampler=SamplerConfig(
            kind="ping-pong", num_steps=4, budgets=BudgetSchedule((4, 2, 2, 0, 0))
        ),
        vae=VAEConfig(encoder_width=16, decoder_width=256),
        stereo=StereoConfig(width=128),
    ),
    # The test preset: a few seconds of stereo on a laptop CPU in about a second.
    "tiny": PrestoConfig(
        name="tiny",
        max_duration_s=10.0,
        text=TextEncoderConfig(
            vocab_size=384, d_model=32, num_layers=2, num_heads=2, d_kv=16, d_ff=64
        ),
        dit=DiTConfig(
            num_blocks=4, width=64, num_heads=4, ffn_hidden=128, text_width=32, freq_dim=64
        ),
        sampler=SamplerConfig(
            kind="ping-pong", num_steps=4, budgets=BudgetSchedule((2, 1, 1, 0, 0))
        ),
        vae=VAEConfig(encoder_width=4, decoder_width=64),
        stereo=StereoConfig(n_fft=512, num_mels=32, width=32),
    ),
}

DEFAULT_PRESET = "presto-ls"


def get_preset(name: str) -> PrestoConfig:
    """The preset called `name`; an unknown name raises `ConfigError` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
