"""runtime: run a build folder's engines (made by `python -m export.build`) from its manifest.

    from runtime import Pipeline
    pipe = Pipeline("artifacts/presto-ls")                       # backend and device: auto
    audio = pipe.generate(["warm lofi piano"], seeds=[0], bpm=90)  # Audio: (B, 2, T) at 44.1 kHz
    audio = pipe.generate_takes([Take("warm lofi piano", 0, bpm=90), Take("techno", 1, bpm=128)])

    bucket = pipe.bucket(1, duration_s=32)   # one resolved bucket; its stages one by one:
    text, mask = bucket.encode_text(prompts); noise = bucket.noise(seeds)
    latents = bucket.sample(text, mask, bpm, noise); mono = bucket.decode(latents)
    stereo = bucket.to_stereo(mono, width); latents, audio = bucket.run(text, mask, bpm, width, noise)

`manifest.json` (`Manifest`) is the one contract with `export`. Importing this package loads torch
and numpy only: ONNX Runtime and TensorRT are imported when an engine of theirs is opened. It never
imports `presto_ref`, `export`, `calibration` or `benchmarks` (tests/test_import_boundaries.py).
"""

from runtime.bucket import Bucket
from runtime.engines import Engine, backend_available
from runtime.graphs import allocator_settings, oom_count
from runtime.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Artifact,
    Manifest,
    SamplerDefaults,
    TensorInfo,
    sha256_file,
)
from runtime.packing import Take
from runtime.pipeline import Audio, Pipeline
from runtime.remote import Client

__all__ = [
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "Artifact",
    "Audio",
    "Bucket",
    "Client",
    "Engine",
    "Manifest",
    "Pipeline",
    "SamplerDefaults",
    "Take",
    "TensorInfo",
    "allocator_settings",
    "backend_available",
    "oom_count",
    "sha256_file",
]
