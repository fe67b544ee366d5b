"""Which artifacts of a build folder run here: the backend, the request buckets, the error hints.

A `Catalog` reads one manifest for one backend and device. It answers what `Pipeline` asks before
it loads anything: which backend `auto` means on this device, which (B, T_lat) request buckets are
built, which artifact serves a component at an engine batch, frames and DiT budget, and, when none
does, a `ShapeError` that names the nearest built bucket and the `export.build` command that adds it
to this folder (`runtime.hints`).
For dpmpp-2s a request batch B is served by DiT engines at 2B ([cond; uncond] in one call) or B.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import torch

from presto_common.errors import BackendUnavailable, InputError, ShapeError
from presto_common.names import BACKEND_ALIASES
from runtime.engines import backend_available
from runtime.hints import rebuild_hint
from runtime.manifest import Artifact, Manifest


class Catalog:
    """The artifacts of `manifest` (in `folder`) that `backend` runs on `device`."""

    def __init__(
        self, folder: Path, manifest: Manifest, device: torch.device, backend: str
    ) -> None:
        self.folder, self.manifest, self.device = folder, manifest, device
        self.backend = self._choose_backend(backend)

    def _choose_backend(self, backend: str) -> str:
        present = {a.backend for a in self.manifest.artifacts}
        if backend == "auto":
            # TensorRT is only used when asked for by name until it has run somewhere (README).
            order = ("torch", "onnx") if self.device.type == "cuda" else ("onnx", "torch")
            for b in order:
                if b in present and not backend_available(b) and self._runs_here(b):
                    return b
            fix = rebuild_hint(
                self.manifest, self.folder, backends=("torch",), device=self.device.type
            )
            raise BackendUnavailable(
                f"{self.folder} has no artifacts that run on {self.device} here (it has "
                f"{sorted(present)}); add some with {fix}"
            )
        name = BACKEND_ALIASES.get(backend)
        if name is None:
            raise InputError(f"backend={backend!r}; expected auto, torch, onnxruntime or tensorrt")
        reason = backend_available(name)
        if reason:
            raise BackendUnavailable(reason)
        if name not in present:
            fix = rebuild_hint(self.manifest, self.folder, backends=(name,))
            raise BackendUnavailable(
                f"{self.folder} has no {backend} artifacts; rebuild with {fix}"
            )
        return name

    def _runs_here(self, backend: str) -> bool:
        if backend == "onnx":
            return self.device.type == "cpu"
        if backend == "tensorrt":
            return self.device.type == "cuda"
        suffix = "-cpu.pt2" if self.device.type == "cpu" else "-cuda.pt2"
        return any(a.file.endswith(suffix) for a in self.manifest.artifacts if a.backend == backend)

    def _for_device(self, art: Artifact) -> bool:
        return art.backend != "torch" or art.file.endswith(f"-{self.device.type}.pt2")

    def found(self, component: str, **match) -> list[Artifact]:
        found = self.manifest.find(component, self.backend, **match)
        return [a for a in found if self._for_device(a)]

    def dit_batches(self, batch: int) -> tuple[int, ...]:
        """DiT engine batches that serve request batch B, preferred first."""
        if self.manifest.sampler.kind == "dpmpp-2s":
            return (2 * batch, batch)
        return (batch,)

    def built_buckets(self) -> list[tuple[int, int]]:
        """(B, T_lat) request buckets this backend and device can run, ascending.

        A bucket needs the VAE decoder at batch B and the DiT at a batch its sampler calls it with:
        B for ping-pong; 2B ([cond; uncond] in one call) or B (two calls) for dpmpp-2s.
        """
        decoders = {(a.batch, a.frames) for a in self.found("vae_decoder")}
        dits = {(a.batch, a.frames) for a in self.found("dit")}
        return sorted(
            (b, f) for b, f in decoders if any((d, f) in dits for d in self.dit_batches(b))
        )

    def built_batches(self) -> list[int]:
        """Request batch sizes B with at least one built bucket, ascending."""
        return sorted({b for b, _ in self.built_buckets()})

    def built_frames(self, batch: int) -> list[int]:
        """Latent-frame buckets T_lat this backend and device run at request batch B, ascending."""
        return [f for b, f in self.built_buckets() if b == batch]

    def seconds(self, frames: int) -> float:
        """The duration of `frames` latent frames, s (`frames_of` rounds it back to `frames`)."""
        return frames * self.manifest.hop_length / self.manifest.sample_rate

    def frames_of(self, duration_s: float) -> int:
        """Latent frames T_lat of duration_s seconds (the nearest whole frame); InputError for a
        duration outside (0, max_duration_s] or under one frame.

        The longest frame count's own duration passes too: max_duration_s may round up to it
        (5 s is 229.7 frames: 230, 5.007 s), and a caller may ask for `seconds(frames)`.
        """
        m = self.manifest
        if isinstance(duration_s, bool) or not isinstance(duration_s, numbers.Real):
            raise InputError(f"duration_s={duration_s!r:.80} must be a number of seconds")
        longest = max(m.max_duration_s, self.seconds(round(m.max_duration_s / self.seconds(1))))
        if not (math.isfinite(duration_s) and 0 < duration_s <= longest):
            raise InputError(
                f"duration_s={duration_s} must be in (0, {m.max_duration_s:g}] s for {m.model_name}"
            )
        frames = round(duration_s * m.sample_rate / m.hop_length)
        if frames < 1:
            raise InputError(
                f"duration_s={duration_s} is shorter than one latent frame; ask for more"
            )
        return frames

    def frames_for(self, duration_s: float | None) -> int:
        """`frames_of(duration_s)` (None: the longest built at any batch) if some batch has a
        bucket at those frames; ShapeError naming the nearest built duration and the fix otherwise.
        """
        built = {f for _, f in self.built_buckets()}
        if duration_s is None:
            duration_s = self.seconds(max(built)) if built else self.manifest.max_duration_s
        frames = self.frames_of(duration_s)
        if frames not in built:
            fix = rebuild_hint(self.manifest, self.folder, durations_s=(self.seconds(frames),))
            if not built:
                raise ShapeError(
                    f"{self.folder} has no buckets on this backend; rebuild with {fix}"
                )
            near = self.seconds(min(built, key=lambda f: abs(f - frames)))
            raise ShapeError(
                f"duration_s={duration_s:g} ({frames} frames) has no bucket at any batch in "
                f"{self.folder}; the nearest built duration is {near:.2f} s: ask for that, or "
                f"rebuild with {fix}"
            )
        return frames

    def artifact(
        self, component: str, batch: int, frames: int | None, budget: int | None = None
    ) -> Artifact:
        """The artifact of a component at engine batch, frames (and DiT budget).

        Raises ShapeError naming the nearest built bucket and the build flag that adds this one.
        """
        found = self.found(component, batch=batch, frames=frames, budget=budget)
        if found:
            return found[0]
        buckets = sorted({(a.batch, a.frames) for a in self.found(component)})
        if component == "dit" and (batch, frames) in buckets:
            built = sorted({a.budget for a in self.found("dit")})
            fix = rebuild_hint(self.manifest, self.folder, budgets=(budget,))
            raise ShapeError(
                f"no DiT engine for budget {budget} (built: {built}); rebuild with {fix}, "
                f"or pick steps and rho whose budgets were built"
            )
        raise self.no_bucket(f"no {component} engine for", batch, frames, buckets)

    def no_bucket(
        self, what: str, batch: int, frames: int | None, buckets: Sequence[tuple[int, int | None]]
    ) -> ShapeError:
        """ShapeError: `what` batch B (and frames) is not built; the nearest and the fix."""
        hop, sr = self.manifest.hop_length, self.manifest.sample_rate
        want = f"batch {batch}" + (
            f", {frames} frames ({frames * hop / sr:.2f} s)" if frames else ""
        )
        fix = rebuild_hint(
            self.manifest,
            self.folder,
            batch_sizes=(batch,),
            durations_s=(frames * hop / sr,) if frames else None,
        )
        if not buckets:
            return ShapeError(f"{what} {want}: {self.folder} has none; rebuild with {fix}")
        near = min(buckets, key=lambda bf: (abs(bf[0] - batch), abs((bf[1] or 0) - (frames or 0))))
        have = f"batch {near[0]}" + (f", {near[1] * hop / sr:.2f} s" if near[1] else "")
        return ShapeError(f"{what} {want}; the nearest built bucket is {have}; rebuild with {fix}")

    def dit_batch(self, batch: int, frames: int) -> int:
        """The DiT engine batch of request bucket (B, T_lat): for dpmpp-2s 2B before B."""
        for dit_batch in self.dit_batches(batch):
            if self.found("dit", batch=dit_batch, frames=frames):
                return dit_batch
        if self.manifest.sampler.kind == "ping-pong":
            dits = sorted({(a.batch, a.frames) for a in self.found("dit")})
            raise self.no_bucket("no dit engine for", batch, frames, dits)
        # dpmpp-2s: DiT batches are not request batches, so name the request buckets there are.
        raise self.no_bucket(
            f"no DiT engine at batch {2 * batch} (conditional and unconditional in one call) or "
            f"{batch} (in two) for the dpmpp-2s request of",
            batch,
            frames,
            self.built_buckets(),
        )
