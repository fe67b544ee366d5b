"""The quantization recipes, run by NVIDIA ModelOpt on the reference DiT for one budget at a time.

    int8  SmoothQuant (Xiao et al. 2023) with migration strength alpha = 0.5: per input channel j,
          s_j = max|W_:,j|^(1 - alpha) / max|X_j|^alpha, and the layer computes (X s)(W / s)^T;
          then max calibration, per tensor for the smoothed input, per output channel for the
          smoothed weight (ModelOpt's INT8_SMOOTHQUANT_CFG).
    fp8   E4M3, max calibration, per tensor for input and weight (ModelOpt's FP8_DEFAULT_CFG).

ModelOpt inserts fake quantizers into every nn.Linear (`mtq.quantize(model, config, forward_loop)`)
and calibrates them on the forward loop; this module only reads the resulting ranges back into
`LayerScales`. Its presets leave out layers by LLM names ("*proj_out.*", "*lm_head*", ...); here every
Linear of the DiT is calibrated, and `export.quant_onnx` chooses which ones to quantize.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from calibration.trajectories import DiTCall
from export.quant_scales import SMOOTHQUANT_ALPHA, LayerScales
from presto_common.errors import BackendUnavailable, ConfigError
from presto_common.names import QUANTIZATIONS

log = logging.getLogger(__name__)

MODELOPT_PIP = "pip install nvidia-modelopt==0.47.0 requests huggingface_hub"


def import_modelopt():
    """`modelopt.torch.quantization`, or BackendUnavailable with the pip line.

    ModelOpt 0.47.0 imports `requests` and `huggingface_hub` unconditionally but does not declare
    them without its [hf] extra, so a plain `pip install nvidia-modelopt` fails at import.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Cannot find transformers package" and the like
            import modelopt.torch.quantization as mtq
    except ImportError as err:
        raise BackendUnavailable(
            f"NVIDIA ModelOpt cannot be imported ({err}); {MODELOPT_PIP}"
        ) from None
    return mtq


def modelopt_version() -> str:
    import modelopt

    return str(modelopt.__version__)


def modelopt_config(precision: str) -> dict:
    """ModelOpt's preset for `precision` with only its generic rules (quantize every Linear's input
    and weight); SmoothQuant's alpha set to SMOOTHQUANT_ALPHA for int8."""
    mtq = import_modelopt()
    if precision not in QUANTIZATIONS:
        raise ConfigError(f"precision {precision!r} is unknown; choose fp8 or int8")
    preset = mtq.INT8_SMOOTHQUANT_CFG if precision == "int8" else mtq.FP8_DEFAULT_CFG
    generic = ("*", "*weight_quantizer", "*input_quantizer")
    quant_cfg = [
        copy.deepcopy(rule)
        for rule in preset["quant_cfg"]
        if rule.get("quantizer_name") in generic and "parent_class" not in rule
    ]
    algorithm = (
        {"method": "smoothquant", "alpha": SMOOTHQUANT_ALPHA}
        if precision == "int8"
        else copy.deepcopy(preset["algorithm"])
    )
    return {"quant_cfg": quant_cfg, "algorithm": algorithm}


@torch.no_grad()
def quantize_with_modelopt(
    model: nn.Module, forward_loop: Callable[[nn.Module], None], precision: str
) -> nn.Module:
    """`mtq.quantize` on `model` in place (fake quantizers in every Linear, calibrated on
    `forward_loop`); returns the model."""
    mtq = import_modelopt()
    config = modelopt_config(precision)
    # ModelOpt prints its progress ("Inserted 93 quantizers") and warns for every Linear of a
    # dropped block ("... is not calibrated, skip smoothing"), which is expected here.
    with contextlib.redirect_stdout(io.StringIO()) as out, warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*is not calibrated, skip smoothing")
        warnings.filterwarnings("ignore", r"Cannot find transformers package")
        mtq.quantize(model, config, forward_loop)
    log.debug("modelopt: %s", out.getvalue().strip().replace("\n", "; "))
    return model


def read_scales(model: nn.Module, precision: str) -> dict[str, LayerScales]:
    """The ranges of every calibrated ModelOpt-quantized Linear of `model`, by module name.

    ModelOpt's SmoothQuant multiplies the input by `pre_quant_scale` and the weight's columns by its
    inverse, then recalibrates the weight's amax: so `smooth` = pre_quant_scale and both amaxes are
    of the smoothed operands, as `LayerScales` wants.
    """
    scales: dict[str, LayerScales] = {}
    for name, module in model.named_modules():
        quantizer = getattr(module, "input_quantizer", None)
        if quantizer is None or quantizer.amax is None:
            continue  # not a Linear, or one that never ran (a dropped block)
        weight_amax = module.weight_quantizer.amax.detach().float()
        smooth = channel_amax = None
        if precision == "int8":
            weight_amax = weight_amax.reshape(-1)  # (N, 1) -> (N,)
            smooth = quantizer.pre_quant_scale.detach().float().reshape(-1)  # (K,)
            # The per-channel input range ModelOpt measured before smoothing (no public accessor).
            channel_amax = quantizer._amax_for_smoothing.detach().float().reshape(-1)  # (K,)
        scales[name] = LayerScales(
            input_amax=quantizer.amax.detach().float().reshape(()),
            weight_amax=weight_amax.reshape(()) if precision == "fp8" else weight_amax,
            smooth=smooth,
            input_channel_amax=channel_amax,
        )
    return scales


def calibrate_budget(
    denoiser: nn.Module, calls: Sequence[DiTCall], precision: str
) -> dict[str, LayerScales]:
    """Calibrate a copy of `denoiser` (presto_ref's EDMPrecond around the DiT) on the records of one
    budget; returns scales for every Linear that ran, named as in the DiT ("blocks.0.attn.q").

    Linear layers of blocks that the budget drops never run and get no entry.
    """
    budgets = {c.budget for c in calls}
    assert len(budgets) == 1, f"calls of one budget expected, got budgets {sorted(budgets)}"
    model = copy.deepcopy(denoiser).float().eval()

    def forward_loop(m: nn.Module) -> None:
        for c in calls:
            m(c.x, c.sigma, text=c.text, text_mask=c.text_mask, bpm=c.bpm, budget=c.budget)

    quantize_with_modelopt(model, forward_loop, precision)
    return read_scales(model.net, precision)
