"""export: a Presto model to deployable artifacts (ONNX, TensorRT / TensorRT-RTX engines, PyTorch
AOTInductor packages) and the `manifest.json` that describes them for `runtime`.

    build_folder(out, preset=..., ...) -> Manifest   build (or reuse) every artifact into `out`
    load_model(preset=..., checkpoint=...)           the model a build would take
    available_backends()                             what this machine can build
    forward_cost(model_or_config, component, ...)    FLOPs and weight bytes of one call, as
    forward_flops(...)                               every manifest artifact records them
    padded_head_width(d)                             the DiT's attention head width in exported
                                                     graphs (export/attention.py: 72 -> 80)

The command line is `python -m export.build` (see its --help). ONNX, TensorRT and Polygraphy are
imported only when a build needs them. With quantization="fp8"/"int8" and a calibration folder, the
DiT is built from its Q/DQ graph (quant_onnx.py, the folder's format in quant_scales.py) and its torch
packages with real FP8/INT8 GEMMs (quant_torch.py); `calibration` writes those folders.
"""

from export.attention import padded_head_width
from export.folder import BuiltArtifact, build_folder, load_model
from export.plan import available_backends
from presto_ref.flops import ForwardCost, forward_cost, forward_flops

__all__ = [
    "BuiltArtifact",
    "ForwardCost",
    "available_backends",
    "build_folder",
    "forward_cost",
    "forward_flops",
    "load_model",
    "padded_head_width",
]
