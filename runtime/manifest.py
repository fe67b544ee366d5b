"""`manifest.json`: the one contract between `export` (which writes it) and `runtime` (which reads it).

It describes every artifact of a build folder (backend, file, sha256, precision, tensors, budget,
bucket), the model's config and hash, the sampler defaults with per-step budgets, and the build
environment. Unknown schema versions and files whose hash does not match are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presto_common.errors import ArtifactError
from presto_common.files import read_json
from presto_common.names import (  # noqa: F401  (the values the fields take)
    BACKENDS,
    COMPONENTS,
    QUANTIZATIONS,
)

# 2: per-artifact flops and weight_bytes. 3: per-artifact quantization and calibration_sha256
# (FP8/INT8 DiT artifacts built from a calibration); a version-2 reader would take an INT8 DiT
# for an fp32 one, so version 2 folders are rebuilt rather than read.
SCHEMA_VERSION = 3
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, numpy-style dtype name and static shape."""

    name: str
    dtype: str  # "float32", "bfloat16", "int64", "bool", ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Artifact:
    """One built file: a component at one precision, budget and shape bucket, for one backend."""

    component: str  # one of COMPONENTS
    backend: str  # one of BACKENDS
    file: str  # path relative to the build folder
    sha256: str
    size_bytes: int
    precision: str  # "fp32", "fp16", "bf16": of the graph's tensors and unquantized operations
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    batch: int  # static batch size of the bucket
    frames: int | None  # latent frames of the bucket; None for the text encoder
    budget: int | None = None  # blocks dropped; DiT only
    flops: int = 0  # floating-point operations of one call (2 x multiply-accumulates), at export
    weight_bytes: int = 0  # bytes of the weights one call reads, at the artifact's precision
    build: dict[str, Any] = field(default_factory=dict)  # backend details: versions, targets, times
    quantization: str | None = None  # one of QUANTIZATIONS: the DiT's GEMMs in FP8 / INT8
    calibration_sha256: str | None = None  # sha256 of the scales file it was quantized with

    @property
    def key(self) -> tuple:
        return (
            self.component,
            self.backend,
            self.precision,
            self.quantization,
            self.budget,
            self.batch,
            self.frames,
        )


@dataclass(frozen=True)
class SamplerDefaults:
    """How the build's default sampling runs: sigmas, and the DiT budget of every step."""

    kind: str  # "ping-pong" or "dpmpp-2s"
    num_steps: int
    rho: float
    sigma_min: float
    sigma_max: float
    sigma_data: float
    sigmas: tuple[float, ...]  # the schedule, high to low, without a trailing 0
    step_budgets: tuple[int, ...]  # the budget of each step under the default schedule
    budgets: tuple[int, ...]  # the budget per noise band, highest noise first
    sigma_thresholds: tuple[float, ...]  # band edges in sigma, descending
    cfg_scale: float


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a build folder."""

    schema_version: int
    toolkit_version: str
    model_name: str
    config: dict[str, Any]  # the model config as presto_ref's to_dict() wrote it
    config_hash: str
    sample_rate: int  # Hz
    hop_length: int  # audio samples per latent frame
    latent_channels: int
    max_tokens: int  # text tokens per prompt, EOS included
    tokenizer: str  # "byte"
    bpm_range: tuple[float, float]
    max_duration_s: float
    sampler: SamplerDefaults
    artifacts: tuple[Artifact, ...]
    build_env: dict[str, Any]  # torch / onnx / TensorRT versions, opset, compute capabilities

    # --- serialisation ---

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_FILE) -> Manifest:
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{where} has schema_version {version!r}; this runtime reads version "
                f"{SCHEMA_VERSION}: rebuild the folder with this toolkit's {_rebuild(data, where)}"
            )
        try:
            artifacts = tuple(
                Artifact(
                    **{
                        **a,
                        "inputs": tuple(_tensor(t) for t in a["inputs"]),
                        "outputs": tuple(_tensor(t) for t in a["outputs"]),
                    }
                )
                for a in data["artifacts"]
            )
            sampler = SamplerDefaults(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in data["sampler"].items()}
            )
            fields = {k: v for k, v in data.items() if k not in ("artifacts", "sampler")}
            fields["bpm_range"] = tuple(fields["bpm_range"])
            return cls(**fields, sampler=sampler, artifacts=artifacts)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ArtifactError(
                f"{where} is malformed ({err}); rebuild the folder with {_rebuild(data, where)}"
            ) from None

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Read `folder/manifest.json`; raises ArtifactError if missing, unreadable or unknown."""
        path = Path(folder) / MANIFEST_FILE
        data = read_json(
            path,
            ArtifactError,
            missing=f"{path} not found: {folder} is not a build folder; make one with "
            f"`python -m export.build --out {folder}`",
            fix=f"rebuild the folder with `python -m export.build --out {folder}`",
        )
        return cls.from_dict(data, str(path))

    # --- queries ---

    def find(self, component: str, backend: str, **match: Any) -> list[Artifact]:
        """Artifacts of a component and backend whose fields equal every keyword given."""
        return [
            a
            for a in self.artifacts
            if a.component == component
            and a.backend == backend
            and all(getattr(a, k) == v for k, v in match.items())
        ]

    def verify_files(self, folder: str | Path, artifacts: list[Artifact] | None = None) -> None:
        """Check that each artifact's file exists and has the recorded sha256."""
        for art in self.artifacts if artifacts is None else artifacts:
            path = Path(folder) / art.file
            if not path.is_file():
                raise ArtifactError(f"{path} is missing; rebuild with `python -m export.build`")
            digest = sha256_file(path)
            if digest != art.sha256:
                raise ArtifactError(
                    f"{path} is corrupt: sha256 {digest[:12]}... does not match the manifest's "
                    f"{art.sha256[:12]}...; rebuild with `python -m export.build`"
                )


def _rebuild(data: Any, where: str) -> str:
    """The build command for a manifest this runtime cannot read: its recorded source (preset or
    checkpoint) where the file still holds one, and always its folder as --out. The whole command,
    buckets included, is `runtime.hints.rebuild_command`, which needs a readable manifest."""
    env = data.get("build_env") if isinstance(data, dict) else None
    source = env.get("source") if isinstance(env, dict) else None
    source = source if isinstance(source, dict) else {}
    argv = ["python", "-m", "export.build"]
    if source.get("checkpoint"):
        argv += ["--checkpoint", str(source["checkpoint"])]
    elif source.get("preset"):
        argv += ["--preset", str(source["preset"])]
    argv += ["--out", str(Path(where).parent)]
    command = f"`{shlex.join(argv)}`"
    if len(argv) == 5:
        command += " (add the --preset or --checkpoint it was built from)"
    return command


def _tensor(data: dict[str, Any]) -> TensorInfo:
    return TensorInfo(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
