"""What gets exported: one `ExportSpec` per component, precision, layer budget and shape bucket.

Every graph takes and returns fp32 tensors (ids and masks as int64 / bool); inside, the weights and
activations are in the target precision, with fp32 kept where presto_ref keeps it (norm statistics,
rotary angles, EDM preconditioning, the mel front end). So the runtime never casts, and an fp32 and a
bf16 build of one component have the same interface.

    text_encoder   ids (B, S) int64, mask (B, S) bool                      -> tokens (B, S, D_text)
    dit            x (B, C_lat, T_lat), sigma (B,), text (B, S, D_text),
                   text_mask (B, S) bool, bpm (B,)                        -> x0 (B, C_lat, T_lat)
    vae_decoder    latents (B, C_lat, T_lat)                               -> audio (B, 1, 960 T_lat)
    stereo         mono (B, 1, T), width (B,)                              -> stereo (B, 2, T)

The DiT graph contains the EDM preconditioning, so it maps noisy latents and sigma to x0 directly.
Each component has one small function that makes its spec (`dit_spec`, ...); `make_specs` lists a
build's. For a dpmpp-2s model the DiT is built at 2B rows (CFG++'s conditional and unconditional
passes in one call) for B takes; ping-pong builds keep B.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from export.attention import attach_rotary_tables, pad_attention_heads
from export.fold import fold_weight_norm, replace_transposed_convs
from export.fuse import fuse_dit_projections
from presto_common.errors import ConfigError
from presto_common.names import COMPONENTS, torch_dtype
from presto_ref.config import PrestoConfig
from presto_ref.pipeline import Presto

if TYPE_CHECKING:
    from export.quant_scales import Calibration

Precision = Literal["fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ExportSpec:
    """One graph to export: its module, named inputs and outputs, and the bucket it is built for."""

    component: str  # "text_encoder", "dit", "vae_decoder" or "stereo"
    precision: Precision
    batch: int
    frames: int | None  # latent frames; None for the text encoder
    budget: int | None  # DiT only
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # "fp8" or "int8": a DiT whose GEMMs are quantized (export/quant_onnx.py), its other operations
    # at `precision`; None for every other graph.
    quantization: str | None = None

    @property
    def name(self) -> str:
        """File stem, e.g. `dit-b12-bf16-1x1470`, or `dit-b12-int8-1x1470` when quantized."""
        budget = f"-b{self.budget}" if self.budget is not None else ""
        bucket = f"{self.batch}x{self.frames}" if self.frames is not None else f"{self.batch}"
        return f"{self.component}{budget}-{self.quantization or self.precision}-{bucket}"

    def sample_inputs(
        self, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, ...]:
        """Inputs in realistic ranges: noise at sigma 1, BPM 120, a half-full text mask."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            if spec.name == "ids":
                t = torch.randint(3, 259, spec.shape, generator=g)
            elif spec.dtype == torch.bool:
                t = torch.zeros(spec.shape, dtype=torch.bool)
                t[..., : max(1, spec.shape[-1] // 2)] = True
            elif spec.name == "sigma":
                t = torch.ones(spec.shape)
            elif spec.name == "bpm":
                t = torch.full(spec.shape, 120.0)
            elif spec.name == "width":
                t = torch.ones(spec.shape)
            elif spec.name == "mono":
                t = 0.2 * torch.randn(spec.shape, generator=g)  # about -14 dBFS
            else:
                t = torch.randn(spec.shape, generator=g)
            out.append(t.to(device))
        return tuple(out)


# --- graph wrappers: tensors in, tensors out, fp32 at the boundary --------------------------------


class TextEncoderGraph(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.encoder(ids, mask).float()


class DiTGraph(nn.Module):
    """D(x; sigma) at one fixed budget (paper eq. 4); the preconditioning stays fp32."""

    def __init__(self, denoiser: nn.Module, budget: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.budget = budget

    def forward(
        self, x: Tensor, sigma: Tensor, text: Tensor, text_mask: Tensor, bpm: Tensor
    ) -> Tensor:
        return self.denoiser(x, sigma, text=text, text_mask=text_mask, bpm=bpm, budget=self.budget)


class VAEDecoderGraph(nn.Module):
    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: Tensor) -> Tensor:
        dtype = next(self.decoder.parameters()).dtype
        return self.decoder(latents.to(dtype)).float()


class StereoGraph(nn.Module):
    def __init__(self, stereo: nn.Module) -> None:
        super().__init__()
        self.stereo = stereo

    def forward(self, mono: Tensor, width: Tensor) -> Tensor:
        dtype = self.stereo.side_generator.conv_pre.weight.dtype
        return self.stereo(mono.to(dtype), width).float()


def graph_for(model: Presto, component: str, budget: int | None = None) -> nn.Module:
    """The exported graph's module around `model`'s components (no copy: shares the weights)."""
    if component == "text_encoder":
        return TextEncoderGraph(model.text_encoder)
    if component == "dit":
        return DiTGraph(model.denoiser, budget if budget is not None else 0)
    if component == "vae_decoder":
        return VAEDecoderGraph(model.vae.decoder)
    if component == "stereo":
        return StereoGraph(model.stereo)
    raise ConfigError(f"unknown component {component!r}; expected one of {COMPONENTS}")


# --- the export-ready model and the buckets it can be built for ----------------------------------


def export_model(
    model: Presto, precision: Precision, *, mask_free: bool = True, rope_tables: bool = True
) -> Presto:
    """A copy of `model` ready for export: weight norm folded, transposed convolutions in polyphase
    form (export/fold.py), the DiT's projections fused (export/fuse.py), weights in the target
    dtype, eval mode.

    mask_free: pad the attention heads so that attention runs without its key mask
    (export/attention.py). Quantization takes an unpadded copy (mask_free=False): it reads the
    unpadded weights, and export/quant_torch.py pads after quantizing.
    rope_tables: give the padded attentions fp32 cos/sin tables for the model's longest bucket
    (export.attention.attach_rotary_tables) instead of computing them in every block; False
    keeps the per-block computation (scripts/quant_round.py's bf16-rope-inline compares them)."""
    dtype = torch_dtype(precision)
    # A fresh model, not copy.deepcopy: a deep copy shares the classes that parametrisation creates
    # per module, and folding one copy would strip the `weight` property from the other.
    clone = Presto(model.config)
    clone.load_state_dict(model.state_dict())
    fold_weight_norm(clone)
    replace_transposed_convs(clone)
    fuse_dit_projections(clone.dit)
    if mask_free:
        pad_attention_heads(clone.dit)
    clone = clone.float().eval().to(dtype)
    if mask_free and rope_tables:
        attach_rotary_tables(clone.dit, model.config.max_frames)
    return clone


def dit_batch_size(config: PrestoConfig, batch: int) -> int:
    """Rows of a DiT call for B takes: 2B for dpmpp-2s, whose CFG++ runs the conditional and the
    unconditional pass of every evaluation in one call ([cond; uncond]); B otherwise."""
    return 2 * batch if config.sampler.kind == "dpmpp-2s" else batch


def check_buckets(
    config: PrestoConfig,
    batch_sizes: tuple[int, ...],
    frames: tuple[int, ...],
    budgets: tuple[int, ...],
) -> None:
    """ConfigError naming the first batch size, frame count or budget `config` cannot take."""
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(
                f"batch size {b!r} must be >= 1, a whole number of takes; e.g. --batch-sizes 1,4"
            )
    for budget in budgets:
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise ConfigError(
                f"budget {budget!r} must be a whole number of blocks dropped; e.g. --budgets 0,8"
            )
        if not 0 <= budget < config.dit.num_blocks:
            raise ConfigError(
                f"budget {budget} cannot be built: {config.name} has {config.dit.num_blocks} "
                f"blocks, so a budget is 0..{config.dit.num_blocks - 1}"
            )
    for n in frames:
        if not 1 <= n <= config.max_frames:
            raise ConfigError(
                f"a bucket of {n} frames ({config.duration_for_frames(n):.2f} s) is outside what "
                f"{config.name} takes: 1..{config.max_frames} frames "
                f"(max {config.max_duration_s:g} s)"
            )


# --- one spec per component: `model` is an export_model() copy, whose weights the module shares ---

F32, I64, BOOL = torch.float32, torch.int64, torch.bool


def text_encoder_spec(model: Presto, precision: Precision, batch: int) -> ExportSpec:
    """ids (B, S) int64, mask (B, S) bool -> tokens (B, S, D_text)."""
    S, D_text = model.config.text.max_tokens, model.config.text.d_model
    return ExportSpec(
        component="text_encoder",
        precision=precision,
        batch=batch,
        frames=None,
        budget=None,
        module=graph_for(model, "text_encoder"),
        inputs=(TensorSpec("ids", I64, (batch, S)), TensorSpec("mask", BOOL, (batch, S))),
        outputs=(TensorSpec("tokens", F32, (batch, S, D_text)),),
    )


def dit_spec(
    model: Presto, precision: Precision, batch: int, frames: int, budget: int
) -> ExportSpec:
    """D(x; sigma) at one budget: x (B, C_lat, T_lat), sigma (B,), text (B, S, D_text),
    text_mask (B, S) bool, bpm (B,) -> x0 (B, C_lat, T_lat). `batch` is the call's rows (2B for
    dpmpp-2s, see `dit_batch_size`)."""
    cfg = model.config
    S, D_text, C = cfg.text.max_tokens, cfg.text.d_model, cfg.dit.latent_channels
    B, T_lat = batch, frames
    return ExportSpec(
        component="dit",
        precision=precision,
        batch=B,
        frames=T_lat,
        budget=budget,
        module=graph_for(model, "dit", budget),
        inputs=(
            TensorSpec("x", F32, (B, C, T_lat)),
            TensorSpec("sigma", F32, (B,)),
            TensorSpec("text", F32, (B, S, D_text)),
            TensorSpec("text_mask", BOOL, (B, S)),
            TensorSpec("bpm", F32, (B,)),
        ),
        outputs=(TensorSpec("x0", F32, (B, C, T_lat)),),
    )


def vae_decoder_spec(model: Presto, precision: Precision, batch: int, frames: int) -> ExportSpec:
    """latents (B, C_lat, T_lat) -> audio (B, 1, T), T = hop_length * T_lat."""
    C, samples = model.config.dit.latent_channels, frames * model.config.hop_length
    return ExportSpec(
        component="vae_decoder",
        precision=precision,
        batch=batch,
        frames=frames,
        budget=None,
        module=graph_for(model, "vae_decoder"),
        inputs=(TensorSpec("latents", F32, (batch, C, frames)),),
        outputs=(TensorSpec("audio", F32, (batch, 1, samples)),),
    )


def stereo_spec(model: Presto, precision: Precision, batch: int, frames: int) -> ExportSpec:
    """mono (B, 1, T), width (B,) -> stereo (B, 2, T), T = hop_length * T_lat."""
    samples = frames * model.config.hop_length
    return ExportSpec(
        component="stereo",
        precision=precision,
        batch=batch,
        frames=frames,
        budget=None,
        module=graph_for(model, "stereo"),
        inputs=(TensorSpec("mono", F32, (batch, 1, samples)), TensorSpec("width", F32, (batch,))),
        outputs=(TensorSpec("stereo", F32, (batch, 2, samples)),),
    )


# --- the list a build makes -----------------------------------------------------------------------


def make_specs(
    model: Presto,
    precision: Precision,
    batch_sizes: tuple[int, ...] = (1,),
    frames: tuple[int, ...] | None = None,
    budgets: tuple[int, ...] | None = None,
    components: tuple[str, ...] = COMPONENTS,
    calibration: Calibration | None = None,
) -> list[ExportSpec]:
    """Specs for every component, DiT budget and (batch, frames) bucket, in build order.

    frames defaults to the config's maximum duration (1470 frames = 32 s for the paper presets);
    budgets default to the distinct budgets of the config's schedule. batch_sizes are takes B: the
    DiT is built at `dit_batch_size` rows (2B for dpmpp-2s), the rest at B. The text encoder is
    built at batch 1 alone when 1 is among batch_sizes (the runtime uses no other then).

    calibration: quantize the DiT's GEMMs with it (`calibration.precision`, fp8 or int8), one
    quantized copy per budget at `precision` (export/quant_onnx.py): the module of the Q/DQ graph;
    the torch builder puts real FP8/INT8 GEMMs into its own copy (export/quant_torch.py).
    """
    cfg = model.config
    frames = frames or (cfg.max_frames,)
    budgets = budgets if budgets is not None else cfg.sampler.budgets.distinct_budgets
    check_buckets(cfg, batch_sizes, frames, budgets)
    m = export_model(model, precision)
    dit_models = {b: m for b in budgets}  # the model each budget's DiT spec wraps
    if calibration is not None and "dit" in components:
        from export.quant_onnx import quantized_dit_model  # it imports this module

        dit_models = {b: quantized_dit_model(model, b, calibration, precision)[0] for b in budgets}
    quantization = calibration.precision if calibration is not None else None
    specs: list[ExportSpec] = []
    # runtime.Pipeline encodes prompt by prompt (and caches each) with a batch-1 text encoder when
    # the build has one, so a batch-B encoder beside it would never run: build it only without one.
    text_batches = (1,) if 1 in batch_sizes else batch_sizes
    for B in batch_sizes:
        if "text_encoder" in components and B in text_batches:
            specs.append(text_encoder_spec(m, precision, B))
        for T_lat in frames:
            if "dit" in components:
                rows = dit_batch_size(cfg, B)
                for b in budgets:
                    spec = dit_spec(dit_models[b], precision, rows, T_lat, b)
                    specs.append(dataclasses.replace(spec, quantization=quantization))
            if "vae_decoder" in components:
                specs.append(vae_decoder_spec(m, precision, B, T_lat))
            if "stereo" in components:
                specs.append(stereo_spec(m, precision, B, T_lat))
    return specs
