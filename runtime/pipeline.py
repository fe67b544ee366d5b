"""Prompt, BPM and seed to 44.1 kHz audio, from a build folder's engines.

    pipe = Pipeline("artifacts/presto-ls", backend="torch", device="cuda")
    audio = pipe.generate(["warm lofi piano"], seeds=[0], bpm=90, duration_s=32)
    audio.samples.shape, audio.sample_rate      # (1, 2, 1411200), 44100
    takes = [Take("warm lofi piano", 0, bpm=90), Take("driving techno", 1, bpm=128, width=1.5)]
    audio = pipe.generate_takes(takes, duration_s=32)   # per-take prompt, seed, BPM and width

The chain per request: text encoder (cached per prompt; runtime/text_encoding.py) -> the sampler
the manifest names, calling the DiT engine of each noise level's budget (ping-pong:
x = sigma_0 z_0; x0 = D(x; sigma_i); x = x0 + sigma_{i+1} z_{i+1}; or DPM-Solver++(2S) with
CFG++) -> VAE decoder -> mono-to-stereo.
`Pipeline.bucket` resolves one (batch, frames, schedule, sampler, stereo) bucket and its engines
(`runtime.bucket.Bucket`, whose stages can be run one by one); on CUDA its chain after the text
encoder is captured once in a CUDA graph and replayed, with the request's noise, text tokens, BPM
and width copied into the graph's input buffers first (the allocator is asked for expandable
segments: runtime/graphs.py). Calls are serialised by a lock: threads may share one pipeline.

A request of N takes runs in the batch buckets built at its duration, as `runtime.packing.plan`
chunks them (fewest rows, then fewest calls; a short last chunk is padded with copies of its last
take, which are dropped); a take is the same in any chunk as alone. `check_take` and `frames_for`
validate a take and a duration before any work; `warm_up` runs every built bucket once.

For dpmpp-2s the DiT runs the conditional and unconditional passes of a batch-B request in one call
when the build has DiT engines at batch 2B for the bucket, else in two calls at batch B; the VAE
decoder and the mono-to-stereo model always run at B.
"""

from __future__ import annotations

import logging
import numbers
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from presto_common.errors import ArtifactError, BackendUnavailable, InputError, NumericalError
from presto_common.tokenizer import encode_bytes
from runtime.audio import Audio
from runtime.bucket import Bucket
from runtime.catalog import Catalog
from runtime.engines import Engine, open_engine
from runtime.graphs import use_expandable_segments
from runtime.hints import rebuild_hint
from runtime.host_copy import HostStaging, copy_to_pinned
from runtime.manifest import Artifact, Manifest
from runtime.packing import Take, check_take, pack, plan
from runtime.sampling import check_kind, evaluations, num_draws
from runtime.schedule import schedule
from runtime.text_encoding import TextEncoding

log = logging.getLogger(__name__)


class Pipeline:
    """The engines of one build folder for one backend and device."""

    def __init__(
        self,
        folder: str | Path,
        backend: str = "auto",
        device: str | None = None,
        cuda_graph: bool = True,
        text_cache_size: int = 1024,
    ) -> None:
        """text_cache_size: prompts whose text-encoder output is kept (least recently used out)."""
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
        if self.cuda_graph:
            use_expandable_segments()  # captures fragment fixed-size segments
        self._engines: dict[str, Engine] = {}
        self._text = TextEncoding(self.device, text_cache_size, self.cuda_graph)
        self._buckets: dict[tuple, Bucket] = {}
        self._lock = threading.RLock()  # shared with the buckets: one call at a time
        self._host = HostStaging()  # pinned buffers for the audio's copy to the host, per shape

    def release_graphs(self) -> int:
        """Drop every captured CUDA graph and its private memory pool; returns how many.

        Each bucket's graph keeps a pool as large as its peak working set, which at large batches
        is most of the GPU. The next `generate` or `Bucket.run` of a bucket captures it again.
        """
        with self._lock:
            text = self._text.release_graph()
            return text + sum(bucket.release_graph() for bucket in self._buckets.values())

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
        """T5 tokens (B, S, D) and mask (B, S) on the device, cached per prompt (batch-1 engine;
        the `text_cache_size` prompts used last; runtime/text_encoding.py)."""
        ids, mask = encode_bytes(list(prompts), self.manifest.max_tokens)
        art = self._text_artifact(len(prompts))
        engine = self._engine(art)
        with self._lock:
            return self._text.encode(prompts, ids, mask, engine, art.batch)

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
            duration_s = self.catalog.seconds(max(built)) if built else m.max_duration_s
        frames = self.catalog.frames_of(duration_s)
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

    # --- requests: checks, packing, generation ---

    def check_take(self, take: Take) -> Take:
        """`take` with float bpm and width if it fits this build (prompt within max_tokens, seed in
        [0, 2**63 - 1], bpm in the manifest's bpm_range, width in WIDTH_RANGE); InputError with
        the CLI's one-line message otherwise. Loads nothing."""
        return check_take(
            take, max_tokens=self.manifest.max_tokens, bpm_range=self.manifest.bpm_range
        )

    def frames_for(self, duration_s: float | None) -> int:
        """Latent frames T_lat of duration_s seconds (None: the longest built at any batch).

        InputError for a duration outside (0, max_duration_s]; ShapeError naming the nearest built
        duration and the rebuild command when no batch has a bucket at those frames.
        """
        return self.catalog.frames_for(duration_s)

    def generate_takes(
        self,
        takes: Sequence[Take],
        *,
        duration_s: float | None = None,
        num_steps: int | None = None,
        rho: float | None = None,
        stereo: bool = True,
        cfg_scale: float | None = None,
        pinned: bool = False,
    ) -> Audio:
        """Generate N takes of one duration: samples (N, C, T), take n from takes[n].

        The takes run in the batch buckets built at that duration, chunked by
        `runtime.packing.plan`; each equals the take generated alone. duration_s=None takes the
        longest built at any batch; num_steps, rho and cfg_scale (CFG++ lambda in [0, 1],
        dpmpp-2s only) None take the manifest's. Thread-safe (calls are serialised).

        pinned=True (CUDA only; ignored on the CPU): the samples live in page-locked memory from
        torch's pinned-block cache, and each chunk's audio is copied into them directly, without
        the copy out of a staging buffer; for callers that copy the audio elsewhere at once (the
        server). Page-locked memory is the operating system's to spare: do not keep many.
        """
        # 1. Validate every take and the duration before any work.
        if isinstance(takes, (str, Take)) or not takes:
            raise InputError(f"takes={takes!r:.80}; expected a non-empty sequence of runtime.Take")
        if all(isinstance(t, Take) for t in takes):  # each prompt error names its index
            encode_bytes([t.prompt for t in takes], self.manifest.max_tokens)
        takes = [self.check_take(t) for t in takes]
        frames = self.frames_for(duration_s)
        duration_s = self.catalog.seconds(frames)
        batches = [b for b, f in self.built_buckets() if f == frames]
        with self._lock:
            # 2. Resolve every bucket of the plan (loading its engines) before running any.
            chunks = pack(takes, plan(len(takes), batches))
            buckets = {
                len(chunk): self.bucket(len(chunk), duration_s, num_steps, rho, stereo, cfg_scale)
                for chunk, _ in chunks
            }
            # 3. Run each chunk and keep its real rows (one array: no second copy of the audio).
            shape = (len(takes), 2 if stereo else 1, frames * self.manifest.hop_length)
            direct = pinned and self.device.type == "cuda"
            if direct:  # page-locked (torch's cache of pinned blocks): each chunk copied into it
                host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
                samples = host.numpy()
            else:
                samples = np.empty(shape, dtype=np.float32)
            start = 0
            for chunk, real in chunks:
                audio = self._run(buckets[len(chunk)], chunk)
                if direct:
                    copy_to_pinned(audio[:real], host[start : start + real])
                else:
                    samples[start : start + real] = self._host.to_host(audio)[:real]
                start += real
        return Audio(
            samples=samples,
            sample_rate=self.manifest.sample_rate,
            seeds=tuple(t.seed for t in takes),
        )

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
        """Generate one take per prompt, take b from seeds[b], all at one bpm and width: see
        `generate_takes`."""
        if isinstance(prompts, str) or len(prompts) != len(seeds) or not prompts:
            raise InputError(
                f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt"
            )
        integer = (numbers.Integral,)  # numpy integers too, never a bool: check_take refuses it
        seeds = [int(s) if isinstance(s, integer) and not isinstance(s, bool) else s for s in seeds]
        return self.generate_takes(
            [Take(p, s, bpm, width) for p, s in zip(prompts, seeds, strict=True)],
            duration_s=duration_s,
            num_steps=num_steps,
            rho=rho,
            stereo=stereo,
            cfg_scale=cfg_scale,
        )

    def warm_up(self, stereo: bool | Sequence[bool] = (True, False)) -> int:
        """Run every built (B, T_lat) bucket once per stereo flag, at the manifest's schedule, so
        that on CUDA each bucket's graph is captured before a server reports ready; returns how
        many buckets ran. Other schedules (num_steps, rho, cfg_scale) capture on first use."""
        flags = (stereo,) if isinstance(stereo, bool) else tuple(stereo)
        runs = 0
        with self._lock:
            for batch, frames in self.built_buckets():
                duration_s = self.catalog.seconds(frames)
                for flag in flags:
                    bucket = self.bucket(batch, duration_s, stereo=bool(flag))
                    # The chain alone: a host copy here would pin staging buffers that the
                    # server, which copies with `pinned=True`, never uses.
                    self._run(bucket, (_WARM_UP,) * batch)
                    runs += 1
        log.info("warmed up %d buckets", runs)
        return runs

    def _run(self, bucket: Bucket, takes: Sequence[Take]) -> Tensor:
        """The chain of one bucket on len(takes) == B checked takes: audio (B, C, T) on the
        pipeline's device, checked finite. On the CPU it may be an engine's output buffer, which
        the next call overwrites: copy it to the host before releasing the lock."""
        text, mask = bucket.encode_text([t.prompt for t in takes])
        noise = bucket.noise([t.seed for t in takes])
        bpm_t = torch.tensor([t.bpm for t in takes], dtype=torch.float32, device=self.device)
        width_t = torch.tensor([t.width for t in takes], dtype=torch.float32, device=self.device)
        # The chain after the text encoder (a CUDA-graph replay on CUDA).
        latents, audio = bucket.run(text, mask, bpm_t, width_t, noise)
        for name, t in (("latents", latents), ("audio", audio)):
            if not torch.isfinite(t).all():
                m = self.manifest
                fix = rebuild_hint(m, self.folder, precision="fp32")
                raise NumericalError(
                    f"the {name} of this request hold NaN or Inf (backend {self.backend}, "
                    f"{self.device}, {m.artifacts[0].precision}); check the build's precision "
                    f"or rebuild it in fp32 with {fix}"
                )
        return audio


_WARM_UP = Take("warm up", 0)  # the prompt and seed every bucket is warmed up with
