"""The eager baselines: presto_ref's own model (`presto_ref.pipeline.Presto`), uncompiled.

The model is rebuilt from the build's manifest config with seeded random weights (`init_seed`, as
export makes them), or loaded from a checkpoint whose config hash must equal the build's, and cast
to fp32 (TF32 off while it runs) or bf16. Its stages are the model's own: `encode_text`,
`sample_latents` (the config's sampler and schedule, as the build's; it draws its noise on the
CPU, as the reference does), `decode`, `to_stereo`; end to end is `generate`.

It does the work of the build's bucket at the same duration, so its FLOPs are that bucket's, and
its weight bytes those of the same calls at the eager precision (benchmarks.costs.eager_costs).
The bucket is resolved once, on the build's engines for this device (runtime.Pipeline, backend
auto), which are dropped before the model runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.backends import BPM, WIDTH, Backend, BackendSpec, Stages, duration_s, prompts
from benchmarks.costs import Cost, at_batch, eager_costs
from benchmarks.measure import free_memory
from presto_common.errors import ArtifactError, BackendUnavailable
from presto_common.names import torch_dtype
from presto_ref.checkpoint import load_checkpoint, random_model, read_config
from presto_ref.config import PrestoConfig
from presto_ref.pipeline import Presto, Request, validate_request
from runtime import Artifact, Manifest, Pipeline

log = logging.getLogger(__name__)


class EagerBackend(Backend):
    """presto_ref's model at the build's config, in fp32 or bf16, without compilation."""

    def __init__(
        self,
        spec: BackendSpec,
        folder: Path,
        device: str | None,
        checkpoint: Path | None,
        seed: int,
    ) -> None:
        self.spec, self.name, self.folder, self.device_arg = spec, spec.name, folder, device
        self.checkpoint, self.init_seed = checkpoint, seed
        self.manifest = Manifest.load(folder)
        self.config = PrestoConfig.from_dict(self.manifest.config)
        if checkpoint is not None:
            found = read_config(checkpoint).config_hash()
            if found != self.manifest.config_hash:
                raise ArtifactError(
                    f"checkpoint {checkpoint} has config hash {found[:12]}..., the build was made "
                    f"from {self.manifest.config_hash[:12]}...; benchmark a build of this "
                    f"checkpoint (`python -m export.build --checkpoint {checkpoint}`) or drop "
                    f"--checkpoint"
                )
        self.device = self.engines().device  # fails now, not after other backends, if none runs
        self._model: Presto | None = None
        self._costs: dict[int, tuple[dict[str, Cost], int]] = {}

    @property
    def model(self) -> Presto:
        if self._model is None:
            dtype = torch_dtype(self.spec.precision)
            if self.checkpoint is not None:
                log.info("%s: loading %s", self.name, self.checkpoint)
                model = load_checkpoint(self.checkpoint, self.device, dtype)
            else:
                log.info("%s: random weights from init seed %d", self.name, self.init_seed)
                model = random_model(self.config, self.init_seed)
            self._model = model.to(device=self.device, dtype=dtype).eval()
        return self._model

    def describe(self) -> dict[str, Any]:
        weights = str(self.checkpoint) if self.checkpoint else f"random, init seed {self.init_seed}"
        return {
            "kind": "eager",
            "precision": self.spec.precision,
            "cuda_graph": False,
            "weights": weights,
        }

    def batch1_frames(self) -> list[int]:
        """The buckets whose costs the build's engines give, at any batch."""
        return sorted({f for _, f in self.engines().built_buckets()})

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

    def request(self, batch: int, frames: int, stereo: bool = True) -> Request:
        return Request(
            prompts=tuple(prompts(batch)),
            seeds=tuple(range(batch)),
            bpm=BPM,
            duration_s=duration_s(frames, self.manifest),
            stereo=stereo,
            width=WIDTH,
        )

    def generate(self, batch: int, frames: int, stereo: bool) -> torch.Tensor:
        return self.model.generate(self.request(batch, frames, stereo)).cpu()

    def stages(self, batch: int, frames: int) -> Stages:
        # The smallest built bucket's costs, once; its engines are dropped before the model runs.
        if frames not in self._costs:
            pipe = self.engines()
            smallest = min((b for b, f in pipe.built_buckets() if f == frames), default=1)
            bucket = pipe.bucket(smallest, duration_s=duration_s(frames, self.manifest))
            self._costs[frames] = eager_costs(bucket, self.weight_bytes), smallest
            del bucket, pipe
            free_memory(self.device)
        model, request = self.model, self.request(batch, frames)
        sampler = validate_request(model.config, request)
        text, mask = model.encode_text(request.prompts)
        bpm = torch.full((batch,), BPM, device=self.device)

        def sample() -> torch.Tensor:
            return model.sample_latents(text, mask, bpm, request.seeds, frames, sampler)

        latents = sample()
        mono = model.decode(latents)
        calls: dict[str, Callable[[int], Any]] = {
            "text_encoder": lambda i: model.encode_text(prompts(batch)),
            "dit_steps": lambda i: sample(),
            "vae_decoder": lambda i: model.decode(latents),
            "stereo": lambda i: model.to_stereo(mono, WIDTH),
            "e2e_mono": lambda i: self.generate(batch, frames, stereo=False),
            "e2e_stereo": lambda i: self.generate(batch, frames, stereo=True),
        }
        return Stages(calls, at_batch(*self._costs[frames], batch))

    def engines(self) -> Pipeline:
        """The build's engines on this device (none loaded yet): where the eager costs come from."""
        try:
            return Pipeline(self.folder, device=self.device_arg, cuda_graph=False)
        except BackendUnavailable as err:
            raise BackendUnavailable(
                f"backend {self.name} takes its FLOPs from the build's engines, and none run on "
                f"this device: {err}"
            ) from None

    def weight_bytes(self, art: Artifact) -> int:
        """Bytes of weights the eager model reads doing `art`'s work, at its own precision."""
        if art.precision == self.spec.precision:
            return art.weight_bytes
        from export import forward_cost  # the counter that wrote the manifest's weight_bytes

        # It counts on a meta-device model, which weight norm cannot build in inference mode.
        with torch.inference_mode(False):
            cost = forward_cost(
                self.config, art.component, 1, art.frames, art.budget, self.spec.precision
            )
        return cost.weight_bytes

    def close(self) -> None:
        self._model = None
        free_memory(self.device)
