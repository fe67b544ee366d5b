"""Names shared by `export` (which writes them into manifests) and `runtime` (which reads them).

COMPONENTS   the exported graphs, in chain order
BACKENDS     the artifact kinds a build holds
PRECISIONS   weight and activation formats a graph can be exported in
QUANTIZATIONS  calibrated formats of the DiT's GEMMs (Q/DQ graphs); the rest stays at a PRECISION
"""

from __future__ import annotations

from presto_common.errors import ConfigError

TOOLKIT_VERSION = "0.6.0"

# text encoder -> DiT (once per layer budget) -> VAE decoder -> mono-to-stereo
COMPONENTS: tuple[str, ...] = ("text_encoder", "dit", "vae_decoder", "stereo")

BACKENDS: tuple[str, ...] = ("onnx", "tensorrt", "torch")
# What users may type for a backend; "onnxruntime" is the runtime's name for running "onnx" files.
BACKEND_ALIASES: dict[str, str] = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "tensorrt": "tensorrt",
    "torch": "torch",
}

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
# The torch dtype name of each precision (torch.<name>); see `torch_dtype`.
_TORCH_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# FP8 E4M3 and INT8 GEMMs of the DiT, calibrated by `python -m calibration.calibrate` and built by
# `python -m export.build --quantization`.
QUANTIZATIONS: tuple[str, ...] = ("fp8", "int8")

SAMPLERS: tuple[str, ...] = ("ping-pong", "dpmpp-2s")


def backend_name(name: str) -> str:
    """The canonical backend for a user-typed name (aliases included); ConfigError otherwise."""
    try:
        return BACKEND_ALIASES[name]
    except KeyError:
        raise ConfigError(
            f"backend {name!r} is unknown; choose from {', '.join(sorted(BACKEND_ALIASES))}"
        ) from None


def torch_dtype(precision: str):
    """The torch dtype of a precision name ("bf16" -> torch.bfloat16); ConfigError otherwise."""
    import torch

    if precision not in _TORCH_DTYPE_NAMES:
        raise ConfigError(
            f"precision {precision!r} is unknown; choose from {', '.join(PRECISIONS)}"
        )
    return getattr(torch, _TORCH_DTYPE_NAMES[precision])
