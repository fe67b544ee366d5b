"""What `Pipeline.generate` and `Pipeline.generate_takes` return: B takes of audio and their seeds.

`Audio.write_wav` writes one take as a WAV file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from presto_common.cli import write_wavs


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # (B, C, T) float32 as computed (stereo may exceed [-1, 1]); C = 2 or 1
    sample_rate: int  # Hz
    seeds: tuple[int, ...]

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate

    def write_wav(
        self, path: str | Path, take: int = 0, *, float_wav: bool = False, normalize: bool = False
    ) -> Path:
        """Write one take as a WAV (16-bit unless float_wav; see `presto_common.cli.write_wavs`)."""
        path = Path(path)
        write_wavs(
            [path],
            self.samples[take : take + 1],
            self.sample_rate,
            float_wav=float_wav,
            normalize=normalize,
        )
        return path
