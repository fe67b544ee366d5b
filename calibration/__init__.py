"""FP8 / INT8 calibration of the DiT on the sampler's own trajectories, and Q/DQ graphs for TensorRT.

    python -m calibration.calibrate --preset tiny --precision int8 --duration-s 1 -o DIR
        runs the reference sampler on the shipped prompts (calibration/prompts.txt) and seeds,
        and writes DIR/scales.safetensors and DIR/calibration.json (export/quant_scales.py)
    python -m export.build --preset tiny --quantization int8 --calibration DIR ...
        engines whose DiT has QuantizeLinear/DequantizeLinear around its GEMMs (export/quant_onnx.py)
    python -m calibration.report --engines QDIR --against FP32DIR
        what the quantization cost: x0 cosine and relative L2 per step on the fp32 sampler's own
        DiT inputs, and latents and audio SNR end to end with the same noise (report.py; the
        measurements in fidelity.py)

What NVIDIA ModelOpt (`nvidia-modelopt`, imported lazily) does: the recipes. `mtq.quantize` puts
fake quantizers into every nn.Linear of a copy of the DiT and calibrates them on a forward loop:
SmoothQuant with alpha 0.5 and max calibration for int8 (per-tensor inputs, per-channel weights),
max calibration for fp8 E4M3 (per tensor). What the project does itself: record the DiT's inputs
along the sampler's trajectories and group them by layer budget (trajectories.py), run ModelOpt once
per budget and read its ranges back (recipes.py); in export/, so that export.build reads them
without importing calibration, the file format (quant_scales.py) and the Q/DQ graph (quant_onnx.py):
its own fake-quantization op around the fp32 graph's fused GEMMs ([q|k|v], o, [w1|w3], w2), whose
shared SmoothQuant factors it derives from ModelOpt's per-channel ranges with ModelOpt's formula,
exported by torch.onnx's dynamo exporter with export/'s DiT spec, so that names and shapes match the
fp32 DiT. ModelOpt's own ONNX export path is not used: it targets its TorchScript-exporter symbolic
functions, while export/ uses the dynamo exporter.
"""
