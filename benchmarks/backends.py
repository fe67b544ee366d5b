"""The backends that benchmarks.latency times side by side, each as one callable per stage.

    engines        the build's `auto` backend, CUDA graph on CUDA
    torch          the AOTInductor packages, CUDA graph on CUDA
    torch-nograph  the AOTInductor packages, every engine called uncaptured
    onnxruntime    the ONNX files on ONNX Runtime (CPU)
    tensorrt       the TensorRT plans, CUDA graph on CUDA
    eager-fp32     presto_ref's eager model in fp32, TF32 off (benchmarks.eager)
    eager-bf16     presto_ref's eager model cast to bf16 (benchmarks.eager)

Engine backends run through the runtime's public API only: `Pipeline.bucket(B, duration_s)` at the
build's default schedule, whose stage methods are timed one by one (`encode_text` with new prompts,
`sample` on fixed noise, `decode`, `to_stereo`), and `Pipeline.generate` end to end. Every backend
runs the same work: the manifest's default sampler, new prompts per text encoding, stereo width 1.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.costs import Cost, bucket_costs
from benchmarks.measure import free_memory
from presto_common.errors import BackendUnavailable
from runtime import Manifest, Pipeline

PROMPT = "warm lofi hip hop with piano and vinyl crackle"
BPM = 120.0
WIDTH = 1.0  # stereo width: the model's own


@dataclass(frozen=True)
class BackendSpec:
    name: str  # as given to --backends
    kind: str  # "engines" (runtime.Pipeline) or "eager" (presto_ref)
    runtime_backend: str | None = None  # Pipeline's backend argument; engines only
    cuda_graph: bool = False  # capture the chain on CUDA; engines only
    precision: str | None = None  # "fp32" or "bf16"; eager only


SPECS = {
    s.name: s
    for s in (
        BackendSpec("engines", "engines", "auto", cuda_graph=True),
        BackendSpec("torch", "engines", "torch", cuda_graph=True),
        BackendSpec("torch-nograph", "engines", "torch", cuda_graph=False),
        BackendSpec("onnxruntime", "engines", "onnxruntime", cuda_graph=True),
        BackendSpec("tensorrt", "engines", "tensorrt", cuda_graph=True),
        BackendSpec("eager-fp32", "eager", precision="fp32"),
        BackendSpec("eager-bf16", "eager", precision="bf16"),
    )
}


def parse_backends(text: str) -> list[BackendSpec]:
    """Comma-separated names to specs, in order; ValueError naming an unknown or repeated name."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPECS]
    if unknown or not names:
        raise ValueError(
            f"unknown backend {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {','.join(SPECS)}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"backend {', '.join(repeated)} is listed twice; name each once")
    return [SPECS[n] for n in names]


_tags = itertools.count()


def prompts(batch: int) -> list[str]:
    """`batch` prompts no earlier call used, so the runtime's text cache never hits."""
    tag = next(_tags)
    return [f"{PROMPT} #{tag}.{b}" for b in range(batch)]


def duration_s(frames: int, manifest: Manifest) -> float:
    """Seconds of audio in `frames` latent frames of a build."""
    return frames * manifest.hop_length / manifest.sample_rate


@dataclass
class Stages:
    """What to time at one batch, on inputs prepared once: per stage a callable taking the call
    index, and the cost of one call (benchmarks.costs)."""

    calls: dict[str, Callable[[int], Any]]
    costs: dict[str, Cost]


class Backend:
    """What benchmarks.latency times: one backend's stages and generations on `device`."""

    name: str
    device: torch.device

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def batch1_frames(self) -> list[int]:
        """Latent-frame buckets T_lat it can time at batch 1."""
        raise NotImplementedError

    def batch_candidates(self, frames: int) -> list[int] | None:
        """The batches it can run at `frames`; None for any (the max-batch search then bisects)."""
        return None

    def running(self) -> contextlib.AbstractContextManager:
        """The context its timing runs in."""
        return contextlib.nullcontext()

    def stages(self, batch: int, frames: int) -> Stages:
        raise NotImplementedError

    def generate(self, batch: int, frames: int, stereo: bool) -> None:
        """One whole generation of `batch` takes (new prompts), as a user would run it."""
        raise NotImplementedError

    def release_graphs(self) -> None:
        """Drop captured graphs and cached blocks before an end-to-end stage."""
        free_memory(self.device)

    def reset(self) -> None:
        """Drop what a batch left behind (engines, graphs, cached blocks)."""
        free_memory(self.device)

    def close(self) -> None:
        free_memory(self.device)


class EngineBackend(Backend):
    """A build folder's engines of one backend, through runtime.Pipeline and its buckets."""

    def __init__(self, spec: BackendSpec, folder: Path, device: str | None) -> None:
        self.spec, self.name, self.folder, self.device_arg = spec, spec.name, folder, device
        self.pipe: Pipeline | None = self._open()
        self.device = self.pipe.device
        backend, dev = self.pipe.backend, self.device.type
        # Refuse, before anything runs, engines that cannot run on this device.
        if backend == "onnx" and dev != "cpu":
            raise BackendUnavailable(
                f"backend {self.name}: ONNX Runtime runs on the CPU here (its CUDA provider is not "
                f"wired up); drop {self.name} from --backends or use --device cpu"
            )
        if backend == "tensorrt" and dev != "cuda":
            raise BackendUnavailable(
                f"backend {self.name}: TensorRT engines run on CUDA only; use --device cuda"
            )
        if not self.pipe.built_buckets():
            raise BackendUnavailable(
                f"backend {self.name}: {self.folder} has no {backend} engines for {dev}; build "
                f"them with `python -m export.build --backends {backend} --device {dev}`"
            )

    def _open(self) -> Pipeline:
        spec = self.spec
        return Pipeline(self.folder, spec.runtime_backend, self.device_arg, spec.cuda_graph)

    def describe(self) -> dict[str, Any]:
        dits = self.pipe.manifest.find("dit", self.pipe.backend)
        quantization = dit_quantizations(dits)
        return {
            "kind": "engines",
            "folder": str(self.folder),
            "runtime_backend": self.pipe.backend,
            "precision": ",".join(sorted({a.precision for a in dits})),
            "quantization": ",".join(quantization) or None,
            "cuda_graph": self.pipe.cuda_graph,
        }

    def batch1_frames(self) -> list[int]:
        return self.pipe.built_frames(1)

    def batch_candidates(self, frames: int) -> list[int]:
        """Built batch sizes with a bucket at `frames` for this backend and device."""
        return [b for b, f in self.pipe.built_buckets() if f == frames]

    def generate(self, batch: int, frames: int, stereo: bool) -> None:
        self.pipe.generate(
            prompts(batch),
            seeds=list(range(batch)),
            bpm=BPM,
            duration_s=duration_s(frames, self.pipe.manifest),
            stereo=stereo,
            width=WIDTH,
        )

    def stages(self, batch: int, frames: int) -> Stages:
        # The stereo bucket at the build's default schedule, its engines loaded.
        bucket = self.pipe.bucket(batch, duration_s=duration_s(frames, self.pipe.manifest))
        dev = self.device
        text, mask = bucket.encode_text(prompts(batch))
        noise = bucket.noise(range(batch))
        bpm = torch.full((batch,), BPM, device=dev)
        width = torch.full((batch,), WIDTH, device=dev)
        # Outputs may be an engine's reused buffers: keep copies as the next stages' inputs.
        latents = bucket.sample(text, mask, bpm, noise).clone()
        mono = bucket.decode(latents).clone()
        calls: dict[str, Callable[[int], Any]] = {
            "text_encoder": lambda i: bucket.encode_text(prompts(batch)),
            "dit_steps": lambda i: bucket.sample(text, mask, bpm, noise),
            "vae_decoder": lambda i: bucket.decode(latents),
            "stereo": lambda i: bucket.to_stereo(mono, width),
            "e2e_mono": lambda i: self.generate(batch, frames, stereo=False),
            "e2e_stereo": lambda i: self.generate(batch, frames, stereo=True),
        }
        return Stages(calls, bucket_costs(bucket))

    def release_graphs(self) -> None:
        """Drop the captured graphs' memory pools and return cached blocks to the driver."""
        self.pipe.release_graphs()
        free_memory(self.device)

    def reset(self) -> None:
        """Drop every loaded engine and captured graph, then reopen the build."""
        self.pipe = None
        free_memory(self.device)
        self.pipe = self._open()

    def close(self) -> None:
        self.pipe = None
        free_memory(self.device)


def dit_quantizations(dits) -> list[str]:
    """The quantizations ("fp8", "int8") of DiT artifacts, sorted; [] for unquantized ones."""
    return sorted({a.quantization for a in dits if a.quantization})


def build_label(manifest: Manifest) -> str:
    """What tells a build apart in backend names: its DiT's quantization ("fp8"), else the DiT's
    precision ("bf16")."""
    dits = [a for a in manifest.artifacts if a.component == "dit"]
    kinds = dit_quantizations(dits) or sorted({a.precision for a in dits})
    return "+".join(kinds) or "no-dit"


def open_backend(
    spec: BackendSpec,
    folder: Path,
    device: str | None,
    checkpoint: Path | None = None,
    init_seed: int = 0,
) -> Backend:
    """A backend ready to run; nothing heavy is loaded until its first stage."""
    if spec.kind == "engines":
        return EngineBackend(spec, folder, device)
    try:
        import presto_ref  # noqa: F401  (checked apart: benchmarks.eager may be imported already)
        from benchmarks.eager import EagerBackend
    except ImportError as err:
        raise BackendUnavailable(
            f"backend {spec.name} needs presto_ref (the eager reference), which is not "
            f"importable here ({err}); run from the repository root or install the project "
            f"with its `ref` extra, or drop {spec.name} from --backends"
        ) from None
    return EagerBackend(spec, folder, device, checkpoint, init_seed)
