"""One resolved bucket of a build: its engines, and the generation chain run stage by stage.

A bucket is what one `Pipeline.generate` call runs: a batch size B, a length in latent frames T_lat,
a noise schedule with the DiT budget of each step, a sampler (ping-pong, or DPM-Solver++(2S) with
CFG++ and its guidance lambda) and mono or stereo. `Pipeline.bucket(...)` resolves it against the
manifest, loads its engines once and caches it; its stages can then be run and timed one by one:

    bucket = pipe.bucket(1, duration_s=32)
    text, mask = bucket.encode_text(["warm lofi piano"])    # (B, S, D), (B, S) bool
    noise = bucket.noise([0])                               # bucket.num_draws x (B, C_lat, T_lat)
    latents = bucket.sample(text, mask, bpm, noise)         # (B, C_lat, T_lat)
    audio = bucket.to_stereo(bucket.decode(latents), width) # (B, 1, T) -> (B, 2, T)
    latents, audio = bucket.run(text, mask, bpm, width, noise)  # the same, as one CUDA graph

bpm and width are (B,) float32 tensors on the device (beats per minute; side gain, 1 = the
model's width). Outputs of the stage methods may be an engine's reused output buffers (TensorRT):
the next call overwrites them, so clone what you keep. `run` returns tensors of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from presto_common.errors import InputError, ShapeError
from presto_common.noise import draw_all, fill_draws
from runtime.engines import Engine
from runtime.graphs import CapturedChain
from runtime.host_copy import PinnedUpload
from runtime.manifest import Artifact
from runtime.sampling import dpmpp_2s_cfgpp, ping_pong


class Bucket:
    """The engines and stages of one (B, T_lat, schedule, sampler, stereo) bucket.

    Attributes (read-only):
        batch         B, takes per call
        frames        T_lat, latent frames; the audio has T = T_lat * hop_length samples
        duration_s    T / sample_rate, seconds
        sample_rate   Hz
        sampler_kind  "ping-pong" or "dpmpp-2s"
        sigmas        noise levels of the steps, high to low, without the trailing 0
        budgets       DiT blocks dropped at each step (same length as sigmas)
        evaluations   (sigma, budget) of every D evaluation of `sample`, in order (dpmpp-2s: each
                      is guided, D_c and D_u together)
        dit_calls     (sigma, budget) of every DiT engine call of `sample`, in order: the
                      evaluations, each twice for dpmpp-2s at dit_batch B (cond, then uncond)
        dit_batch     rows of a DiT engine call: B, or 2B for dpmpp-2s with [cond; uncond] in one
        cfg_scale     CFG++ guidance lambda (dpmpp-2s), None for ping-pong
        stereo        whether `run` ends with the mono-to-stereo model
        num_draws     noise tensors `sample` takes (ping-pong: one per step; dpmpp-2s: 1)
        artifacts     {component: [Artifact, ...]} this bucket runs (DiT: one per budget)
    """

    def __init__(
        self,
        *,
        batch: int,
        frames: int,
        sample_rate: int,
        hop_length: int,
        latent_channels: int,
        sampler_kind: str,
        sigmas: Sequence[float],
        budgets: Sequence[int],
        evaluations: Sequence[tuple[float, int]],
        dit_batch: int,
        cfg_scale: float | None,
        stereo: bool,
        num_draws: int,
        artifacts: dict[str, list[Artifact]],
        dits: dict[int, Engine],
        decoder: Engine,
        mono_to_stereo: Engine | None,
        encode_text: Callable[[Sequence[str]], tuple[Tensor, Tensor]],
        device: torch.device,
        cuda_graph: bool,
        lock: threading.RLock,
    ) -> None:
        self.batch, self.frames = batch, frames
        self.sample_rate = sample_rate
        self.duration_s = frames * hop_length / sample_rate
        self.latent_channels = latent_channels
        self.sampler_kind = sampler_kind
        self.sigmas, self.budgets = tuple(sigmas), tuple(budgets)
        self.evaluations = tuple(evaluations)
        self.dit_batch = dit_batch
        two_calls = sampler_kind == "dpmpp-2s" and dit_batch == batch
        self.dit_calls = tuple(c for c in self.evaluations for _ in range(2 if two_calls else 1))
        self.cfg_scale = cfg_scale
        self.stereo = stereo
        self.num_draws = num_draws
        self.artifacts = artifacts
        self.device = device
        self.cuda_graph = cuda_graph
        self._dits, self._decoder, self._m2s = dits, decoder, mono_to_stereo
        self._encode = encode_text
        self._lock = lock
        self._graph: CapturedChain | None = None
        self._noise_upload: PinnedUpload | None = None

    def __repr__(self) -> str:
        return (
            f"Bucket(batch={self.batch}, frames={self.frames}, sampler={self.sampler_kind!r}, "
            f"sigmas={len(self.sigmas)}, dit_batch={self.dit_batch}, stereo={self.stereo})"
        )

    # --- inputs ---

    def encode_text(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """T5 tokens (B, S, D_text) float32 and mask (B, S) bool on the device, cached per prompt."""
        if len(prompts) != self.batch:
            raise ShapeError(
                f"got {len(prompts)} prompts for a batch-{self.batch} bucket; pass {self.batch} "
                f"or resolve a bucket with pipe.bucket({len(prompts)}, ...)"
            )
        with self._lock:
            return self._encode(prompts)

    def noise(self, seeds: Sequence[int]) -> list[Tensor]:
        """`num_draws` standard-normal tensors (B, C_lat, T_lat) float32 on the device, take b from
        seeds[b] (`presto_common.noise`: a take depends on its seed only)."""
        if len(seeds) != self.batch:
            raise ShapeError(
                f"got {len(seeds)} seeds for a batch-{self.batch} bucket; give one seed per take"
            )
        if self.device.type != "cuda":
            return draw_all(seeds, (self.latent_channels, self.frames), self.num_draws)
        shape = (self.num_draws, self.batch, self.latent_channels, self.frames)
        with self._lock:
            if self._noise_upload is None:  # a pinned buffer, one copy up (runtime/host_copy.py)
                self._noise_upload = PinnedUpload(shape, self.device)
            return list(self._noise_upload.upload(lambda buf: fill_draws(seeds, buf)).unbind(0))

    # --- stages ---

    def denoise(
        self, x: Tensor, sigma: float, text: Tensor, text_mask: Tensor, bpm: Tensor, budget: int
    ) -> Tensor:
        """One DiT engine call, D(x; sigma) at `budget`, all at dit_batch rows (paper eq. 4).

        x: (dit_batch, C_lat, T_lat), text: (dit_batch, S, D_text), text_mask: (dit_batch, S) bool,
        bpm: (dit_batch,). Returns x0 of x's shape.
        """
        if budget not in self._dits:
            raise ShapeError(
                f"budget {budget} is not one of this bucket's DiT engines ({sorted(self._dits)}); "
                f"pass one of bucket.budgets"
            )
        sigma_t = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
        (x0,) = self._dits[budget](x, sigma_t, text, text_mask, bpm)
        return x0

    def sample(
        self, text: Tensor, text_mask: Tensor, bpm: Tensor, noise: Sequence[Tensor]
    ) -> Tensor:
        """The sampling loop alone: latents (B, C_lat, T_lat) float32 from `noise(seeds)`."""
        self._check_noise(noise)
        with self._lock:
            return self._sample(text, text_mask, bpm, noise)

    def decode(self, latents: Tensor) -> Tensor:
        """VAE decoder: latents (B, C_lat, T_lat) -> mono audio (B, 1, T) float32 in [-1, 1]."""
        with self._lock:
            (mono,) = self._decoder(latents)
        return mono

    def to_stereo(self, mono: Tensor, width: Tensor) -> Tensor:
        """Mono (B, 1, T) -> stereo (B, 2, T) float32: L = M + w S, R = M - w S, w = width (B,)."""
        if self._m2s is None:
            raise InputError(
                "this bucket was resolved with stereo=False, so it has no mono-to-stereo engine; "
                "resolve it with pipe.bucket(..., stereo=True)"
            )
        with self._lock:
            (stereo,) = self._m2s(mono, width)
        return stereo

    def run(
        self, text: Tensor, text_mask: Tensor, bpm: Tensor, width: Tensor, noise: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """sample -> decode (-> to_stereo): (latents (B, C_lat, T_lat), audio (B, 2 or 1, T)).

        With the pipeline's cuda_graph on CUDA the chain is captured in a CUDA graph on the first
        call and replayed after, with the inputs copied into its static buffers; else uncaptured.
        """
        self._check_noise(noise)
        inputs = (text, text_mask, bpm, width, *noise)
        with self._lock:
            if not self.cuda_graph:
                return self._chain(*inputs)
            if self._graph is None:
                self._graph = CapturedChain(self._chain, inputs)
            latents, audio = self._graph.replay(inputs)
        return latents, audio

    @property
    def captured(self) -> bool:
        """Whether `run` holds a captured CUDA graph (and its private memory pool)."""
        return self._graph is not None

    def release_graph(self) -> bool:
        """Drop the captured CUDA graph and its memory pool; True if there was one."""
        with self._lock:
            had, self._graph = self._graph is not None, None
        return had

    # --- the chain, as captured ---

    def _check_noise(self, noise: Sequence[Tensor]) -> None:
        if len(noise) != self.num_draws:
            raise ShapeError(
                f"got {len(noise)} noise tensors; this {self.sampler_kind} bucket takes "
                f"{self.num_draws}: pass bucket.noise(seeds)"
            )

    def _chain(
        self, text: Tensor, text_mask: Tensor, bpm: Tensor, width: Tensor, *noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        latents = self._sample(text, text_mask, bpm, noise)
        (mono,) = self._decoder(latents)
        if self._m2s is None:
            return latents, mono
        (stereo,) = self._m2s(mono, width)
        return latents, stereo

    def _sample(
        self, text: Tensor, text_mask: Tensor, bpm: Tensor, noise: Sequence[Tensor]
    ) -> Tensor:
        if self.sampler_kind == "ping-pong":

            def x0(x: Tensor, sigma: float, budget: int) -> Tensor:
                return self.denoise(x, sigma, text, text_mask, bpm, budget)

            return ping_pong(x0, self.sigmas, self.budgets, noise)

        # CFG's null condition is "no text": the same tokens with every one masked, the same BPM.
        null_mask = torch.zeros_like(text_mask)
        if self.dit_batch == 2 * self.batch:  # one call on [cond; uncond]
            text2 = torch.cat([text, text])
            mask2 = torch.cat([text_mask, null_mask])
            bpm2 = torch.cat([bpm, bpm])

            def guided(x: Tensor, sigma: float, budget: int) -> tuple[Tensor, Tensor]:
                both = self.denoise(torch.cat([x, x]), sigma, text2, mask2, bpm2, budget)
                return both.chunk(2)

        else:  # two calls at B; the first output is cloned, since a TensorRT engine reuses it

            def guided(x: Tensor, sigma: float, budget: int) -> tuple[Tensor, Tensor]:
                d_c = self.denoise(x, sigma, text, text_mask, bpm, budget).clone()
                return d_c, self.denoise(x, sigma, text, null_mask, bpm, budget)

        return dpmpp_2s_cfgpp(guided, self.evaluations, self.sigmas, noise[0], self.cfg_scale)
