"""presto_ref: the PyTorch reference of a Presto-style text-to-music model (Novack et al., ICLR 2025).

The source of truth for the maths that `export` turns into engines and `runtime` runs. It imports no
other package of this project except the shared leaf `presto_common` (errors, the schedule, the noise
rule and the tokenizer that the runtime must reproduce exactly).

Shape legend used in docstrings and comments:
    B      batch (takes)
    C      channels (C_lat = 32 latent channels)
    T      audio samples at 44.1 kHz (inside the VAE and stereo blocks: samples at that block's
           rate, T / the remaining upsampling)
    T_lat  latent frames, T = 960 * T_lat (32 s = 1470 frames = 1,411,200 samples)
    D      model width
    S      text tokens (max_tokens, 128 for the paper-scale presets)

Entry points:
    presto_ref.presets.PRESETS              named configs (presto-ls, presto-l, small, tiny)
    presto_ref.checkpoint.random_model      a preset with seeded random weights
    presto_ref.checkpoint.load_checkpoint   a model from a checkpoint directory
    presto_ref.pipeline.Presto.generate     prompt -> audio
    python -m presto_ref.generate           the reference CLI
    python -m presto_ref.describe           parameter counts and FLOPs of a preset
"""

from presto_common.names import TOOLKIT_VERSION as __version__  # noqa: E402

__all__ = ["__version__"]
