"""The backends that benchmarks.latency times side by side, each as callables per stage.

    engines        the build's `auto` backend through runtime.Pipeline, CUDA graph on CUDA
    torch          the AOTInductor packages, CUDA graph on CUDA
    torch-nograph  the AOTInductor packages, every engine called uncaptured
    onnxruntime    the ONNX files on ONNX Runtime (CPU)
    tensorrt       the TensorRT plans, CUDA graph on CUDA
    eager-fp32     presto_ref's eager model in fp32, TF32 off
    eager-bf16     presto_ref's eager model cast to bf16

The eager model is rebuilt from the manifest's config with random weights (`init_seed`), or loaded
from a checkpoint whose config hash must equal the build's. Every backend runs the same work: the
manifest's sigmas and per-step budgets in the ping-pong loop (whatever sampler the config names,
since that is what the runtime runs), a new prompt per text encoding, and stereo width 1.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from benchmarks.measure import free_memory
from presto_common.errors import ArtifactError, BackendUnavailable, ShapeError
from presto_common.names import torch_dtype
from presto_common.noise import draw_all
from runtime.manifest import Manifest

log = logging.getLogger(__name__)

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


def prompts(tag: int, batch: int) -> list[str]:
    """`batch` prompts no earlier call used (tag is unique per call): the text cache never hits."""
    return [f"{PROMPT} #{tag}.{b}" for b in range(batch)]


def dit_loop(
    denoise: Callable[[Tensor, float, int], Tensor],
    sigmas: list[float],
    budgets: list[int],
    noise: list[Tensor],
) -> Tensor:
    """The ping-pong loop of runtime.pipeline.run_chain, without the decoder; returns the last x0.

    x = sigma_0 z_0; per step i, x0 = D(x, sigma_i) at the step's budget, then
    x = x0 + sigma_{i+1} z_{i+1}. noise: one (B, C_lat, T_lat) tensor per step.
    """
    x = sigmas[0] * noise[0]
    for i, (sigma, budget) in enumerate(zip(sigmas, budgets)):
        x0 = denoise(x, sigma, budget)
        if i + 1 < len(sigmas):
            x = x0 + sigmas[i + 1] * noise[i + 1]
    return x0


@dataclass
class Stages:
    """What to time at one batch, on inputs prepared once.

    calls: per stage, a callable taking the call index. bytes_read: per stage, the weight bytes one
    call reads (the memory term of the roofline floor).
    """

    calls: dict[str, Callable[[int], Any]]
    bytes_read: dict[str, int]


class Backend(Protocol):
    """What benchmarks.latency needs of a backend (EngineBackend, EagerBackend)."""

    name: str
    device: torch.device

    def describe(self) -> dict[str, Any]: ...
    def batch1_frames(self) -> list[int] | None: ...
    def batch_candidates(self, frames: int) -> list[int] | None: ...
    def running(self) -> contextlib.AbstractContextManager: ...
    def stages(self, batch: int, frames: int) -> Stages: ...
    def generate(self, batch: int, frames: int, stereo: bool) -> None: ...
    def reset(self) -> None: ...
    def release_graphs(self) -> None: ...
    def close(self) -> None: ...


def open_backend(
    spec: BackendSpec,
    folder: Path,
    manifest: Manifest,
    device: str | None,
    checkpoint: Path | None = None,
    init_seed: int = 0,
) -> Backend:
    """A backend ready to run; nothing heavy is loaded until its first stage."""
    if spec.kind == "engines":
        return EngineBackend(spec, folder, device)
    return EagerBackend(spec, manifest, device, checkpoint, init_seed)


def _stage_bytes(text: int, dit_steps: int, decoder: int, stereo: int) -> dict[str, int]:
    mono = text + dit_steps + decoder
    return {
        "text_encoder": text,
        "dit_steps": dit_steps,
        "vae_decoder": decoder,
        "stereo": stereo,
        "e2e_mono": mono,
        "e2e_stereo": mono + stereo,
    }


# --- built engines --------------------------------------------------------------------------------


class EngineBackend:
    """A build folder's engines of one backend, through the public runtime.Pipeline API."""

    def __init__(self, spec: BackendSpec, folder: Path, device: str | None) -> None:
        self.spec, self.name, self.folder, self._device = spec, spec.name, folder, device
        self.pipe = self._open()
        self.device = self.pipe.device
        self._tags = itertools.count()
        self._check_device()

    def _check_device(self) -> None:
        """Refuse, before anything runs, a backend whose engines cannot run on this device."""
        backend, dev = self.pipe.backend, self.device.type
        if backend == "onnx" and dev != "cpu":
            raise BackendUnavailable(
                f"backend {self.name}: ONNX Runtime runs on the CPU here (its CUDA provider is not "
                f"wired up); drop {self.name} from --backends or use --device cpu"
            )
        if backend == "tensorrt" and dev != "cuda":
            raise BackendUnavailable(
                f"backend {self.name}: TensorRT engines run on CUDA only; use --device cuda"
            )
        batches = {a.batch for a in self.pipe.manifest.find("dit", backend)}
        if not any(self.pipe.built_frames(b) for b in batches):
            raise BackendUnavailable(
                f"backend {self.name}: {self.folder} has no {backend} DiT engines for {dev}; build "
                f"them with `python -m export.build --backends {backend} --device {dev}`"
            )

    def _open(self):
        from runtime.pipeline import Pipeline

        return Pipeline(
            self.folder, self.spec.runtime_backend, self._device, cuda_graph=self.spec.cuda_graph
        )

    def describe(self) -> dict[str, Any]:
        dits = self.pipe.manifest.find("dit", self.pipe.backend)
        return {
            "kind": "engines",
            "runtime_backend": self.pipe.backend,
            "precision": ",".join(sorted({a.precision for a in dits})),
            "cuda_graph": self.pipe.cuda_graph,
        }

    def batch1_frames(self) -> list[int]:
        return self.pipe.built_frames(1)

    def batch_candidates(self, frames: int) -> list[int]:
        """Built batch sizes with a DiT bucket at `frames` for this backend and device."""
        batches = {a.batch for a in self.pipe.manifest.find("dit", self.pipe.backend)}
        return sorted(b for b in batches if frames in self.pipe.built_frames(b))

    def running(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def generate(self, batch: int, frames: int, stereo: bool) -> None:
        m = self.pipe.manifest
        self.pipe.generate(
            prompts(next(self._tags), batch),
            seeds=list(range(batch)),
            bpm=BPM,
            duration_s=frames * m.hop_length / m.sample_rate,
            stereo=stereo,
            width=WIDTH,
        )

    def stages(self, batch: int, frames: int) -> Stages:
        pipe, m, dev = self.pipe, self.pipe.manifest, self.device
        sigmas, budgets = list(m.sampler.sigmas), list(m.sampler.step_budgets)
        dits, decoder, m2s = pipe.chain_engines(batch, frames, budgets, stereo=True)
        text, mask = pipe.encode_text(prompts(next(self._tags), batch))
        noise = [
            z.to(dev) for z in draw_all(range(batch), (m.latent_channels, frames), len(sigmas))
        ]
        bpm = torch.full((batch,), BPM, device=dev)
        width = torch.full((batch,), WIDTH, device=dev)
        # Outputs may be an engine's reused buffers: keep copies as the next stages' inputs.
        x0 = dits[budgets[-1]](noise[0], torch.ones(batch, device=dev), text, mask, bpm)[0].clone()
        mono = decoder(x0)[0].clone()

        def denoise(x: Tensor, sigma: float, budget: int) -> Tensor:
            sigma_t = torch.full((batch,), sigma, dtype=torch.float32, device=dev)
            return dits[budget](x, sigma_t, text, mask, bpm)[0]

        calls: dict[str, Callable[[int], Any]] = {
            "text_encoder": lambda i: pipe.encode_text(prompts(next(self._tags), batch)),
            "dit_steps": lambda i: dit_loop(denoise, sigmas, budgets, noise),
            "vae_decoder": lambda i: decoder(x0),
            "stereo": lambda i: m2s(mono, width),
            "e2e_mono": lambda i: self.generate(batch, frames, stereo=False),
            "e2e_stereo": lambda i: self.generate(batch, frames, stereo=True),
        }
        # The pipeline encodes prompt by prompt with a batch-1 encoder when the build has one.
        try:
            text_bytes = batch * pipe.artifact("text_encoder", 1, None).size_bytes
        except ShapeError:
            text_bytes = pipe.artifact("text_encoder", batch, None).size_bytes
        sizes = _stage_bytes(
            text_bytes,
            sum(pipe.artifact("dit", batch, frames, b).size_bytes for b in budgets),
            pipe.artifact("vae_decoder", batch, frames).size_bytes,
            pipe.artifact("stereo", batch, frames).size_bytes,
        )
        return Stages(calls, sizes)

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


# --- the eager reference --------------------------------------------------------------------------


class EagerBackend:
    """presto_ref's model at the build's config, in fp32 or bf16, without compilation."""

    def __init__(
        self,
        spec: BackendSpec,
        manifest: Manifest,
        device: str | None,
        checkpoint: Path | None,
        init_seed: int,
    ) -> None:
        try:
            import presto_ref  # noqa: F401  (fails fast, before anything is built)
            from presto_ref import checkpoint as ckpt
            from presto_ref.config import PrestoConfig
        except ImportError as err:
            raise BackendUnavailable(
                f"backend {spec.name} needs presto_ref (the eager reference), which is not "
                f"importable here ({err}); run from the repository root or install the project "
                f"with its `ref` extra, or drop {spec.name} from --backends"
            ) from None
        self.spec, self.name, self.manifest = spec, spec.name, manifest
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"device {device} asked for, but CUDA is not available; use cpu"
            )
        self.dtype = torch_dtype(spec.precision)
        self.checkpoint, self.init_seed = checkpoint, init_seed
        if checkpoint is not None:
            found = ckpt.read_config(checkpoint).config_hash()
            if found != manifest.config_hash:
                raise ArtifactError(
                    f"checkpoint {checkpoint} has config hash {found[:12]}..., the build was made "
                    f"from {manifest.config_hash[:12]}...; benchmark a build of this checkpoint "
                    f"(`python -m export.build --checkpoint {checkpoint}`) or drop --checkpoint"
                )
        self.config = PrestoConfig.from_dict(manifest.config)
        self._model: nn.Module | None = None
        self._tags = itertools.count()

    @property
    def model(self):
        if self._model is None:
            from presto_ref.checkpoint import load_checkpoint, random_model

            if self.checkpoint is not None:
                log.info("%s: loading %s", self.name, self.checkpoint)
                model = load_checkpoint(self.checkpoint, self.device, self.dtype)
            else:
                log.info("%s: random weights from init seed %d", self.name, self.init_seed)
                model = random_model(self.config, self.init_seed)
            self._model = model.to(device=self.device, dtype=self.dtype).eval()
        return self._model

    def describe(self) -> dict[str, Any]:
        weights = str(self.checkpoint) if self.checkpoint else f"random, init seed {self.init_seed}"
        return {
            "kind": "eager",
            "precision": self.spec.precision,
            "cuda_graph": False,
            "weights": weights,
        }

    def batch1_frames(self) -> None:
        return None

    def batch_candidates(self, frames: int) -> None:
        return None  # any batch: searched

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """inference_mode, and for fp32 no TF32 in matmuls or convolutions (restored after)."""
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        if self.spec.precision == "fp32":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def _schedule(self) -> tuple[list[float], list[int]]:
        s = self.manifest.sampler
        return list(s.sigmas), list(s.step_budgets)

    def generate(self, batch: int, frames: int, stereo: bool) -> Tensor:
        """Prompts to audio on the host, as presto_ref.pipeline chains it, at the manifest's sigmas."""
        from presto_ref.sampling import make_generators, ping_pong

        model, dev = self.model, self.device
        sigmas, budgets = self._schedule()
        budget_of = dict(zip(sigmas, budgets))
        text, mask = model.encode_text(prompts(next(self._tags), batch))
        bpm = torch.full((batch,), BPM, device=dev)
        latents = ping_pong(
            lambda x, sigma: model.denoise(x, sigma, text, mask, bpm, budget_of[sigma]),
            sigmas,
            generators=make_generators(range(batch)),
            item_shape=(self.config.dit.latent_channels, frames),
            device=dev,
        )
        audio = model.decode(latents)
        if stereo:
            audio = model.to_stereo(audio, WIDTH)
        return audio.cpu()

    def stages(self, batch: int, frames: int) -> Stages:
        model, dev = self.model, self.device
        sigmas, budgets = self._schedule()
        text, mask = model.encode_text(prompts(next(self._tags), batch))
        noise = [
            z.to(dev)
            for z in draw_all(range(batch), (self.config.dit.latent_channels, frames), len(sigmas))
        ]
        bpm = torch.full((batch,), BPM, device=dev)

        def denoise(x: Tensor, sigma: float, budget: int) -> Tensor:
            return model.denoise(x, sigma, text, mask, bpm, budget)

        latents = denoise(noise[0], 1.0, budgets[-1])
        mono = model.decode(latents)
        calls: dict[str, Callable[[int], Any]] = {
            "text_encoder": lambda i: model.encode_text(prompts(next(self._tags), batch)),
            "dit_steps": lambda i: dit_loop(denoise, sigmas, budgets, noise),
            "vae_decoder": lambda i: model.decode(latents),
            "stereo": lambda i: model.to_stereo(mono, WIDTH),
            "e2e_mono": lambda i: self.generate(batch, frames, stereo=False),
            "e2e_stereo": lambda i: self.generate(batch, frames, stereo=True),
        }
        # Weights read per call; a budget b skips b of the DiT's equally sized blocks.
        dit, block = _nbytes(model.dit), _nbytes(model.dit.blocks[0])
        sizes = _stage_bytes(
            _nbytes(model.text_encoder),
            sum(dit - b * block for b in budgets),
            _nbytes(model.vae.decoder),
            _nbytes(model.stereo),
        )
        return Stages(calls, sizes)

    def reset(self) -> None:
        free_memory(self.device)  # the model holds no per-batch state

    def release_graphs(self) -> None:
        free_memory(self.device)  # no graphs; cached blocks go back to the driver

    def close(self) -> None:
        self._model = None
        free_memory(self.device)


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
