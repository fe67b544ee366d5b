"""Prompt, BPM and seed to 44.1 kHz audio, from a build folder's engines.

    pipe = Pipeline("artifacts/presto-ls", backend="torch", device="cuda")
    audio = pipe.generate(["warm lofi piano"], seeds=[0], bpm=90, duration_s=32)
    audio.samples.shape, audio.sample_rate      # (1, 2, 1411200), 44100

The chain per request: text encoder (cached per prompt) -> the sampler the manifest names, calling
the DiT engine of each noise level's budget (ping-pong: x = sigma_0 z_0; x0 = D(x; sigma_i);
x = x0 + sigma_{i+1} z_{i+1}; or DPM-Solver++(2S) with CFG++) -> VAE decoder -> mono-to-stereo.
`Pipeline.bucket` resolves one (batch, frames, schedule, sampler, stereo) bucket and its engines
(`runtime.bucket.Bucket`, whose stages can be run one by one); on CUDA its chain after the text
encoder is captured once in a CUDA graph and replayed, with the request's noise, text tokens, BPM
and width copied into the graph's input buffers first. Calls are serialised by a lock, so threads
may share one pipeline.

For dpmpp-2s the DiT runs the conditional and unconditional passes of a batch-B request in one call
when the build has DiT engines at batch 2B for the bucket, else in two calls at batch B; the VAE
decoder and the mono-to-stereo model always run at B.
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
from presto_common.errors import ArtifactError, BackendUnavailable, InputError, NumericalError
from presto_common.tokenizer import encode_bytes
from runtime.bucket import Bucket
from runtime.catalog import Catalog
from runtime.engines import Engine, open_engine
from runtime.hints import rebuild_hint
from runtime.manifest import Artifact, Manifest
from runtime.sampling import check_kind, evaluations, num_draws
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
        self.catalog = Catalog(self.folder, self.manifest, self.device, backend)
        self.backend = self.catalog.backend
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._engines: dict[str, Engine] = {}
        self._text_cache: dict[str, tuple[Tensor, Tensor]] = {}
        self._buckets: dict[tuple, Bucket] = {}
        self._lock = threading.RLock()  # shared with the buckets: one call at a time

    def release_graphs(self) -> int:
        """Drop every captured CUDA graph and its private memory pool; returns how many.

        Each bucket's graph keeps a pool as large as its peak working set, which at large batches
        is most of the GPU. The next `generate` or `Bucket.run` of a bucket captures it again.
        """
        with self._lock:
            return sum(bucket.release_graph() for bucket in self._buckets.values())

    # --- what is built (runtime.catalog) ---

    def built_buckets(self) -> list[tuple[int, int]]:
        """(B, T_lat) request buckets this backend and device can run, ascending."""
        return self.catalog.built_buckets()

    def built_batches(self) -> list[int]:
        """Request batch sizes B with at least one built bucket, ascending."""
        return self.catalog.built_batches()

    def built_frames(self, batch: int) -> list[int]:
        """Latent-frame buckets T_lat this backend and device run at request batch B, ascending."""
        return self.catalog.built_frames(batch)

    def artifact(
        self, component: str, batch: int, frames: int | None, budget: int | None = None
    ) -> Artifact:
        """The artifact of a component at engine batch, frames (and DiT budget); ShapeError with
        the nearest built bucket and the build flag that adds this one otherwise."""
        return self.catalog.artifact(component, batch, frames, budget)

    def _with_full_hint(self, err: ArtifactError | BackendUnavailable) -> Exception:
        """`err` with its bare `python -m export.build` hint replaced by this build's whole command:
        the manifest, sampler and engine wrappers know no model, buckets or folder."""
        bare = "`python -m export.build`"
        if bare not in str(err):
            return err
        return type(err)(str(err).replace(bare, rebuild_hint(self.manifest, self.folder)))

    def _engine(self, art: Artifact) -> Engine:
        if art.file not in self._engines:
            try:
                self.manifest.verify_files(self.folder, [art])
                self._engines[art.file] = open_engine(
                    self.folder, art, self.device, single_threaded=self.cuda_graph
                )
            except (ArtifactError, BackendUnavailable) as err:
                raise self._with_full_hint(err) from None
        return self._engines[art.file]

    def _text_artifact(self, batch: int) -> Artifact:
        """The batch-1 text encoder (run per prompt, cached) if built, else the batch-B one."""
        one = self.catalog.found("text_encoder", batch=1)
        return one[0] if one else self.artifact("text_encoder", batch, None)

    # --- stages ---

    def encode_text(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """T5 tokens (B, S, D) and mask (B, S) on the device, cached per prompt (batch-1 engine)."""
        ids, mask = encode_bytes(list(prompts), self.manifest.max_tokens)
        art = self._text_artifact(len(prompts))
        if art.batch != 1:  # no batch-1 encoder: encode the whole batch at once, uncached
            (tokens,) = self._engine(art)(
                torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
            )
            return tokens, torch.from_numpy(mask).to(self.device)
        engine = self._engine(art)
        rows = []
        with self._lock:
            for i, prompt in enumerate(prompts):
                if prompt not in self._text_cache:
                    (tok,) = engine(
                        torch.from_numpy(ids[i : i + 1]).to(self.device),
                        torch.from_numpy(mask[i : i + 1]).to(self.device),
                    )
                    self._text_cache[prompt] = (
                        tok,
                        torch.from_numpy(mask[i : i + 1]).to(self.device),
                    )
                rows.append(self._text_cache[prompt])
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    def bucket(
        self,
        batch: int,
        duration_s: float | None = None,
        num_steps: int | None = None,
        rho: float | None = None,
        stereo: bool = True,
        cfg_scale: float | None = None,
    ) -> Bucket:
        """Resolve (and cache) the bucket of a request: B takes of duration_s seconds.

        duration_s=None takes the longest built for B; num_steps, rho and cfg_scale (CFG++ lambda,
        dpmpp-2s only) None take the manifest's defaults. Loads the bucket's engines (checking their
        sha256). Raises InputError for values outside the model, ShapeError for a bucket that was
        not built (naming the nearest and the build flag), ArtifactError for a sampler this runtime
        does not know.
        """
        m = self.manifest
        try:
            kind = check_kind(m.sampler.kind)
        except ArtifactError as err:
            raise self._with_full_hint(err) from None
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch={batch!r} must be an integer >= 1")
        if duration_s is None:  # the longest bucket built for this batch size
            built = self.built_frames(batch)
            duration_s = max(built, default=0) * m.hop_length / m.sample_rate or m.max_duration_s
        if not (math.isfinite(duration_s) and 0 < duration_s <= m.max_duration_s):
            raise InputError(
                f"duration_s={duration_s} must be in (0, {m.max_duration_s:g}] s for {m.model_name}"
            )
        frames = round(duration_s * m.sample_rate / m.hop_length)
        if frames < 1:
            raise InputError(
                f"duration_s={duration_s} is shorter than one latent frame; ask for more"
            )
        if kind == "ping-pong":
            if cfg_scale is not None:
                raise InputError(
                    f"cfg_scale={cfg_scale}: guidance applies to the dpmpp-2s sampler only, and "
                    f"this build samples with ping-pong; leave cfg_scale unset"
                )
        else:
            cfg_scale = m.sampler.cfg_scale if cfg_scale is None else float(cfg_scale)
            if not 0 <= cfg_scale <= 1:
                raise InputError(
                    f"cfg_scale={cfg_scale} must be in [0, 1] (the CFG++ lambda; the build's "
                    f"default is {m.sampler.cfg_scale:g})"
                )
        sigmas, budgets = schedule(m.sampler, num_steps, rho)
        key = (batch, frames, tuple(sigmas), tuple(budgets), stereo, cfg_scale)
        with self._lock:
            if key not in self._buckets:
                self._buckets[key] = self._resolve(
                    batch, frames, sigmas, budgets, stereo, cfg_scale
                )
            return self._buckets[key]

    def _resolve(
        self,
        batch: int,
        frames: int,
        sigmas: list[float],
        budgets: list[int],
        stereo: bool,
        cfg_scale: float | None,
    ) -> Bucket:
        m, kind = self.manifest, self.manifest.sampler.kind
        calls = evaluations(kind, sigmas, budgets, m.sampler.budgets, m.sampler.sigma_thresholds)
        dit_batch = self.catalog.dit_batch(batch, frames)
        artifacts = {
            "text_encoder": [self._text_artifact(batch)],
            "dit": [
                self.artifact("dit", dit_batch, frames, b) for b in sorted({b for _, b in calls})
            ],
            "vae_decoder": [self.artifact("vae_decoder", batch, frames)],
        }
        if stereo:
            artifacts["stereo"] = [self.artifact("stereo", batch, frames)]
        m2s = self._engine(artifacts["stereo"][0]) if stereo else None
        return Bucket(
            batch=batch,
            frames=frames,
            sample_rate=m.sample_rate,
            hop_length=m.hop_length,
            latent_channels=m.latent_channels,
            sampler_kind=kind,
            sigmas=sigmas,
            budgets=budgets,
            evaluations=calls,
            dit_batch=dit_batch,
            cfg_scale=cfg_scale,
            stereo=stereo,
            num_draws=num_draws(kind, len(sigmas)),
            artifacts=artifacts,
            dits={a.budget: self._engine(a) for a in artifacts["dit"]},
            decoder=self._engine(artifacts["vae_decoder"][0]),
            mono_to_stereo=m2s,
            encode_text=self.encode_text,
            device=self.device,
            cuda_graph=self.cuda_graph,
            lock=self._lock,
        )

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
        cfg_scale: float | None = None,
    ) -> Audio:
        """Generate one take per prompt, take b from seeds[b]. Thread-safe (calls are serialised).

        duration_s=None takes the longest duration bucket the build has for this batch size;
        cfg_scale (the CFG++ lambda in [0, 1]) applies to dpmpp-2s builds only.
        """
        m = self.manifest
        # 1. Validate the request before any work.
        if isinstance(prompts, str) or len(prompts) != len(seeds) or not prompts:
            raise InputError(
                f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt"
            )
        lo, hi = m.bpm_range
        if not (math.isfinite(bpm) and lo <= bpm <= hi):
            raise InputError(f"bpm={bpm} is outside [{lo:g}, {hi:g}]; pass a BPM in that range")
        if not math.isfinite(width):
            raise InputError(f"width={width} must be a finite number (1.0 is the model's width)")
        B = len(prompts)
        with self._lock:
            # 2. Resolve the bucket and load its engines; 3. text, noise and the per-take scalars.
            bucket = self.bucket(B, duration_s, num_steps, rho, stereo, cfg_scale)
            text, mask = bucket.encode_text(prompts)
            noise = bucket.noise(seeds)
            bpm_t = torch.full((B,), float(bpm), device=self.device)
            width_t = torch.full((B,), float(width), device=self.device)
            # 4. The chain after the text encoder (a CUDA-graph replay on CUDA).
            latents, audio = bucket.run(text, mask, bpm_t, width_t, noise)
            for name, t in (("latents", latents), ("audio", audio)):
                if not torch.isfinite(t).all():
                    fix = rebuild_hint(m, self.folder, precision="fp32")
                    raise NumericalError(
                        f"the {name} of this request hold NaN or Inf (backend {self.backend}, "
                        f"{self.device}, {m.artifacts[0].precision}); check the build's precision "
                        f"or rebuild it in fp32 with {fix}"
                    )
            samples = audio.float().cpu().numpy()
        return Audio(samples=samples, sample_rate=m.sample_rate, seeds=tuple(int(s) for s in seeds))
