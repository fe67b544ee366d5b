"""Prompt, BPM and seed to 44.1 kHz audio, from a build folder's engines.

    pipe = Pipeline("artifacts/presto-ls", backend="torch", device="cuda")
    audio = pipe.generate(["warm lofi piano"], seeds=[0], bpm=90, duration_s=32)
    audio.samples.shape, audio.sample_rate      # (1, 2, 1411200), 44100

The chain per request: text encoder (cached per prompt) -> the DiT engine of each step's budget in
the 4-step ping-pong loop (x = sigma_0 z_0; x0 = D(x, sigma_i); x = x0 + sigma_{i+1} z_{i+1}) -> VAE
decoder -> mono-to-stereo. On CUDA the part after the text encoder is captured once per bucket
(batch, frames, sigmas, budgets, stereo) in a CUDA graph and replayed, with the request's noise, text
tokens, BPM and width copied into the graph's input buffers first. Calls are serialised by a lock,
so threads may share one pipeline.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from presto_common.cli import write_wavs
from presto_common.errors import BackendUnavailable, InputError, NumericalError, ShapeError
from presto_common.names import BACKEND_ALIASES
from presto_common.noise import draw_all
from presto_common.tokenizer import encode_bytes
from runtime.engines import Engine, backend_available, open_engine
from runtime.graphs import CapturedChain
from runtime.manifest import Artifact, Manifest
from runtime.schedule import schedule

log = logging.getLogger(__name__)


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


class Pipeline:
    """The engines of one build folder for one backend and device."""

    def __init__(
        self,
        folder: str | Path,
        backend: str = "auto",
        device: str | None = None,
        cuda_graph: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"device {device} asked for, but CUDA is not available; use cpu"
            )
        self.backend = self._choose_backend(backend)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._engines: dict[str, Engine] = {}
        self._text_cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._graphs: dict[tuple, CapturedChain] = {}
        self._lock = threading.Lock()

    def release_graphs(self) -> int:
        """Drop every captured CUDA graph and its private memory pool; returns how many.

        Each (batch, frames, schedule, stereo) chain keeps a pool as large as its peak working set,
        which at large batches is most of the GPU. The next generate() of a chain captures it again.
        """
        with self._lock:
            n = len(self._graphs)
            self._graphs.clear()
        return n

    # --- choosing artifacts ---

    def _choose_backend(self, backend: str) -> str:
        present = {a.backend for a in self.manifest.artifacts}
        if backend == "auto":
            # TensorRT is only used when asked for by name until it has run somewhere (README).
            order = ("torch", "onnx") if self.device.type == "cuda" else ("onnx", "torch")
            for b in order:
                if b in present and not backend_available(b) and self._runs_here(b):
                    return b
            raise BackendUnavailable(
                f"{self.folder} has no artifacts that run on {self.device} here (it has "
                f"{sorted(present)}); build some with `python -m export.build --backends torch "
                f"--device {self.device.type}`"
            )
        name = BACKEND_ALIASES.get(backend)
        if name is None:
            raise InputError(f"backend={backend!r}; expected auto, torch, onnxruntime or tensorrt")
        reason = backend_available(name)
        if reason:
            raise BackendUnavailable(reason)
        if name not in present:
            raise BackendUnavailable(
                f"{self.folder} has no {backend} artifacts; rebuild with `python -m export.build "
                f"--backends {name}`"
            )
        return name

    def _runs_here(self, backend: str) -> bool:
        if backend == "onnx":
            return self.device.type == "cpu"
        if backend == "tensorrt":
            return self.device.type == "cuda"
        suffix = "-cpu.pt2" if self.device.type == "cpu" else "-cuda.pt2"
        return any(a.file.endswith(suffix) for a in self.manifest.artifacts if a.backend == backend)

    def built_frames(self, batch: int) -> list[int]:
        """Latent-frame buckets of this backend and device at `batch`, ascending."""
        found = self.manifest.find("dit", self.backend, batch=batch)
        return sorted({a.frames for a in found if self._for_device(a)})

    def artifact(
        self, component: str, batch: int, frames: int | None, budget: int | None = None
    ) -> Artifact:
        found = [
            a
            for a in self.manifest.find(
                component, self.backend, batch=batch, frames=frames, budget=budget
            )
            if self._for_device(a)
        ]
        if found:
            return found[0]
        buckets = sorted({(a.batch, a.frames) for a in self.manifest.find(component, self.backend)})
        if component == "dit" and any(b == batch and f == frames for b, f in buckets):
            built = sorted({a.budget for a in self.manifest.find("dit", self.backend)})
            raise ShapeError(
                f"no DiT engine for budget {budget} (built: {built}); rebuild with "
                f"`python -m export.build --budgets {','.join(map(str, sorted({*built, budget})))}` "
                f"or pick steps and rho whose budgets were built"
            )
        hop, sr = self.manifest.hop_length, self.manifest.sample_rate
        near = min(buckets, key=lambda bf: (abs(bf[0] - batch), abs((bf[1] or 0) - (frames or 0))))
        want = f"batch {batch}" + (
            f", {frames} frames ({frames * hop / sr:.2f} s)" if frames else ""
        )
        have = f"batch {near[0]}" + (f", {near[1] * hop / sr:.2f} s" if near[1] else "")
        raise ShapeError(
            f"no {component} engine for {want}; the nearest built bucket is {have}; rebuild with "
            f"`python -m export.build --batch-sizes {batch}"
            + (f" --durations-s {frames * hop / sr:.2f}`" if frames else "`")
        )

    def _for_device(self, art: Artifact) -> bool:
        return art.backend != "torch" or art.file.endswith(f"-{self.device.type}.pt2")

    def _engine(self, art: Artifact) -> Engine:
        if art.file not in self._engines:
            self.manifest.verify_files(self.folder, [art])
            self._engines[art.file] = open_engine(
                self.folder, art, self.device, single_threaded=self.cuda_graph
            )
        return self._engines[art.file]

    # --- stages ---

    def encode_text(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """T5 tokens (B, S, D) and mask (B, S) on the device, cached per prompt (batch-1 engine)."""
        ids, mask = encode_bytes(list(prompts), self.manifest.max_tokens)
        one = [
            a
            for a in self.manifest.find("text_encoder", self.backend, batch=1)
            if self._for_device(a)
        ]
        if not one:  # no batch-1 encoder: encode the whole batch at once, uncached
            art = self.artifact("text_encoder", len(prompts), None)
            (tokens,) = self._engine(art)(
                torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
            )
            return tokens, torch.from_numpy(mask).to(self.device)
        engine = self._engine(one[0])
        rows = []
        for i, prompt in enumerate(prompts):
            if prompt not in self._text_cache:
                (tok,) = engine(
                    torch.from_numpy(ids[i : i + 1]).to(self.device),
                    torch.from_numpy(mask[i : i + 1]).to(self.device),
                )
                self._text_cache[prompt] = (tok, torch.from_numpy(mask[i : i + 1]).to(self.device))
            rows.append(self._text_cache[prompt])
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def chain_engines(self, batch: int, frames: int, budgets: Sequence[int], stereo: bool):
        """({budget: DiT engine}, decoder, mono-to-stereo or None) for one bucket, loaded once."""
        dits = {
            b: self._engine(self.artifact("dit", batch, frames, b)) for b in sorted(set(budgets))
        }
        decoder = self._engine(self.artifact("vae_decoder", batch, frames))
        m2s = self._engine(self.artifact("stereo", batch, frames)) if stereo else None
        return dits, decoder, m2s

    # --- generation ---

    def generate(
        self,
        prompts: Sequence[str],
        *,
        seeds: Sequence[int],
        bpm: float = 120.0,
        duration_s: float | None = None,
        num_steps: int | None = None,
        rho: float | None = None,
        stereo: bool = True,
        width: float = 1.0,
    ) -> Audio:
        """Generate one take per prompt, take b from seeds[b]. Thread-safe (calls are serialised).

        duration_s=None takes the longest duration bucket the build has for this batch size.
        """
        m = self.manifest
        if len(prompts) != len(seeds) or not prompts:
            raise InputError(
                f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt"
            )
        lo, hi = m.bpm_range
        if not (math.isfinite(bpm) and lo <= bpm <= hi):
            raise InputError(f"bpm={bpm} is outside [{lo:g}, {hi:g}]; pass a BPM in that range")
        if duration_s is None:  # the longest bucket built for this batch size
            built = [
                a.frames
                for a in m.find("dit", self.backend, batch=len(prompts))
                if self._for_device(a)
            ]
            duration_s = max(built, default=0) * m.hop_length / m.sample_rate or m.max_duration_s
        if not (math.isfinite(duration_s) and 0 < duration_s <= m.max_duration_s):
            raise InputError(
                f"duration_s={duration_s} must be in (0, {m.max_duration_s:g}] s for {m.model_name}"
            )
        if not math.isfinite(width):
            raise InputError(f"width={width} must be a finite number (1.0 is the model's width)")
        frames = round(duration_s * m.sample_rate / m.hop_length)
        if frames < 1:
            raise InputError(
                f"duration_s={duration_s} is shorter than one latent frame; ask for more"
            )
        sigmas, budgets = schedule(m.sampler, num_steps, rho)
        B = len(prompts)
        with self._lock:
            text, mask = self.encode_text(prompts)
            dits, decoder, m2s = self.chain_engines(B, frames, budgets, stereo)
            noise = [
                z.to(self.device) for z in draw_all(seeds, (m.latent_channels, frames), len(sigmas))
            ]
            bpm_t = torch.full((B,), float(bpm), device=self.device)
            width_t = torch.full((B,), float(width), device=self.device)
            if self.cuda_graph:
                key = (B, frames, tuple(sigmas), tuple(budgets), stereo)
                if key not in self._graphs:
                    self._graphs[key] = CapturedChain(
                        lambda *a: run_chain(dits, decoder, m2s, sigmas, budgets, *a),
                        (text, mask, bpm_t, width_t, *noise),
                    )
                latents, audio = self._graphs[key].replay((text, mask, bpm_t, width_t, *noise))
            else:
                latents, audio = run_chain(
                    dits, decoder, m2s, sigmas, budgets, text, mask, bpm_t, width_t, *noise
                )
            for name, t in (("latents", latents), ("audio", audio)):
                if not torch.isfinite(t).all():
                    raise NumericalError(
                        f"the {name} of this request hold NaN or Inf (backend {self.backend}, "
                        f"{self.device}); check the build's precision or rebuild in fp32"
                    )
            samples = audio.float().cpu().numpy()
        return Audio(samples=samples, sample_rate=m.sample_rate, seeds=tuple(int(s) for s in seeds))


def run_chain(
    dits: dict,
    decoder: Engine,
    m2s: Engine | None,
    sigmas: Sequence[float],
    budgets: Sequence[int],
    text: Tensor,
    mask: Tensor,
    bpm: Tensor,
    width: Tensor,
    *noise: Tensor,
) -> tuple[Tensor, Tensor]:
    """The ping-pong loop, the decoder and the mono-to-stereo model: (latents, audio (B, C, T))."""
    B = text.shape[0]
    x = sigmas[0] * noise[0]
    for i, (sigma, budget) in enumerate(zip(sigmas, budgets)):
        sigma_t = torch.full((B,), sigma, dtype=torch.float32, device=x.device)
        (x0,) = dits[budget](x, sigma_t, text, mask, bpm)
        if i + 1 < len(sigmas):
            x = x0 + sigmas[i + 1] * noise[i + 1]
    (mono,) = decoder(x0)
    if m2s is None:
        return x0, mono
    (stereo,) = m2s(mono, width)
    return x0, stereo
