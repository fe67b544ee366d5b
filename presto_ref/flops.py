"""What one forward pass of a component costs: FLOPs and the bytes of weights it reads.

Both are counted by running the component on the meta device (shapes only, no memory, no maths):

- FLOPs: `torch.utils.flop_counter.FlopCounterMode`, which counts 2 x multiply-accumulates of
  matmuls, convolutions and attention; elementwise work (norms, softmax, Snake, SiLU, rotary) is not
  counted. For presto-ls at 32 s (1470 frames), batch 1, one full-depth DiT forward is 1.634 TFLOP
  (notes/architecture.md 7.1).
- Weight bytes: the parameters and buffers that the forward's ops read, each once, at the dtype
  the model has when cast to `precision` (the mel front end keeps its fp32 bases). So the blocks a
  DiT budget drops are not read, a weight-normed convolution counts its effective weight (what
  export folds it into), and an embedding table counts only the rows its indices can gather.

`export` writes both into every manifest artifact; `presto_ref.describe` prints the FLOPs. They count the
reference maths: export's rewrites keep the FLOPs (export/fold.py, export/fuse.py) up to the
polyphase upsampler's one extra input step per layer, and the weights up to its repeated biases.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from presto_common.errors import ConfigError
from presto_common.names import COMPONENTS, torch_dtype
from presto_ref.config import PrestoConfig
from presto_ref.pipeline import Presto

# The exported graphs, plus the VAE encoder (calibration data, round trips).
COUNTED_COMPONENTS: tuple[str, ...] = (*COMPONENTS, "vae_encoder")


@dataclass(frozen=True)
class ForwardCost:
    """One call of one component at one (batch, frames, budget) bucket."""

    flops: int  # 2 x multiply-accumulates of matmuls, convolutions and attention
    weight_bytes: int  # parameters and buffers the call reads, at the counted precision


def forward_cost(
    model_or_config: Presto | PrestoConfig,
    component: str,
    batch: int = 1,
    frames: int | None = None,
    budget: int | None = None,
    precision: str = "fp32",
) -> ForwardCost:
    """FLOPs and weight bytes of one forward of `component` (one of COUNTED_COMPONENTS).

    frames: latent frames T_lat (None: the config's maximum; the text encoder ignores it).
    budget: DiT blocks dropped (None: 0); other components take None. A model is read for its
    config only: the counting runs on a meta-device copy, so it costs milliseconds at any scale.
    """
    config = model_or_config.config if isinstance(model_or_config, Presto) else model_or_config
    if not isinstance(config, PrestoConfig):
        raise ConfigError(
            f"model_or_config is a {type(model_or_config).__name__}; pass a presto_ref Presto model "
            "or a PrestoConfig (e.g. presto_ref.presets.get_preset('tiny'))"
        )
    if component not in COUNTED_COMPONENTS:
        raise ConfigError(
            f"component {component!r} is unknown; choose from {', '.join(COUNTED_COMPONENTS)}"
        )
    if budget is not None and component != "dit":
        raise ConfigError(f"budget={budget} applies to the dit only, not to {component}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch={batch!r} must be an integer >= 1")
    frames = config.max_frames if frames is None else frames
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ConfigError(f"frames={frames!r} must be an integer >= 1 (latent frames)")
    torch_dtype(precision)  # ConfigError naming the precision if it is unknown
    return _cost(config, component, batch, frames, budget or 0, precision)


def forward_flops(
    model_or_config: Presto | PrestoConfig,
    component: str,
    batch: int = 1,
    frames: int | None = None,
    budget: int | None = None,
) -> int:
    """FLOPs of one forward of `component` (see `forward_cost`)."""
    return forward_cost(model_or_config, component, batch, frames, budget).flops


# --- counting on the meta device ------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _meta_model(config: PrestoConfig, precision: str) -> Presto:
    """`config`'s model on the meta device, cast to `precision` as export casts it."""
    with torch.device("meta"):
        model = Presto(config)
    return model.to(torch_dtype(precision)).eval()


@functools.lru_cache(maxsize=512)
def _cost(
    config: PrestoConfig, component: str, batch: int, frames: int, budget: int, precision: str
) -> ForwardCost:
    model = _meta_model(config, precision)
    S, meta = config.text.max_tokens, torch.device("meta")
    ids = torch.zeros(batch, S, dtype=torch.long, device=meta)
    mask = torch.ones(batch, S, dtype=torch.bool, device=meta)
    latents = torch.zeros(batch, config.dit.latent_channels, frames, device=meta)
    mono = torch.zeros(batch, 1, frames * config.hop_length, device=meta)
    text = torch.zeros(batch, S, config.text.d_model, device=meta)
    scalars = torch.ones(batch, device=meta)  # sigma, BPM

    # The stages the exported graphs compute (export/spec.py), casts at the boundary included.
    calls = {
        "text_encoder": lambda: model.text_encoder(ids, mask),
        "dit": lambda: model.denoiser(
            latents, scalars, text=text, text_mask=mask, bpm=scalars, budget=budget
        ),
        "vae_decoder": lambda: model.decode(latents),
        "vae_encoder": lambda: model.vae.encoder(mono.to(next(model.vae.parameters()).dtype)),
        "stereo": lambda: model.to_stereo(mono),
    }
    reads = _WeightReads(model)
    with torch.no_grad(), reads, FlopCounterMode(display=False) as counter:
        calls[component]()
    return ForwardCost(flops=counter.get_total_flops(), weight_bytes=reads.total_bytes())


class _WeightReads(TorchDispatchMode):
    """Records which of `model`'s parameters and buffers the ops run inside the mode read.

    Each weight is counted once, in full, except a table only ever read by embedding lookups, which
    counts the rows its indices can reach. A weight-normed module counts the weight its factors
    make (what export folds them into), once, whichever factor is read.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.slot_of: dict[int, object] = {}  # id(tensor) -> the weight it is (part of)
        self.size: dict[object, tuple[int, int]] = {}  # weight -> (bytes, rows)
        for module in model.modules():
            if isinstance(module, parametrize.ParametrizationList):
                continue  # its owner counts it, below
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                self.slot_of[id(t)] = id(t)
                self.size[id(t)] = (t.numel() * t.element_size(), t.shape[0] if t.dim() else 1)
            for name, factors in getattr(module, "parametrizations", {}).items():
                weight = getattr(module, name)  # what the factors make, at the model's dtype
                self.size[(id(module), name)] = (weight.numel() * weight.element_size(), 1)
                for t in factors.parameters():
                    self.slot_of[id(t)] = (id(module), name)
        self.full: set[object] = set()  # weights read in full
        self.rows: dict[object, int] = {}  # weight -> rows gathered by embedding lookups

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.ops.aten.embedding.default and id(args[0]) in self.slot_of:
            slot = self.slot_of[id(args[0])]
            num_rows = self.size[slot][1]
            self.rows[slot] = min(num_rows, self.rows.get(slot, 0) + args[1].numel())
        else:
            for t in _tensors((args, kwargs or {})):
                if id(t) in self.slot_of:
                    self.full.add(self.slot_of[id(t)])
        return func(*args, **(kwargs or {}))

    def total_bytes(self) -> int:
        total = sum(self.size[slot][0] for slot in self.full)
        for slot, rows in self.rows.items():
            if slot not in self.full:
                nbytes, num_rows = self.size[slot]
                total += nbytes // num_rows * rows
        return total


def _tensors(value: object) -> Iterator[Tensor]:
    """Every tensor in nested tuples, lists and dicts of op arguments."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
