"""One small engine interface over the backends, and `open_engine` to load an artifact with it.

An engine has `inputs` and `outputs` (TensorInfo, from the manifest or the package) and is called
with torch tensors in input order; it returns a tuple of torch tensors. Backends:

- "torch": AOTInductor packages (`runtime.torch_engine.TorchEngine`), CPU or CUDA.
- "onnx": ONNX Runtime, CPU provider. (ONNX Runtime's CUDA provider with IO binding is not wired
  up: the GPU machine this project is tested on has no onnxruntime-gpu, so it could not be verified.)

- "tensorrt": `.plan` files through `runtime.trt_engine.TrtEngine` (CUDA only; not yet executed
  anywhere, see README).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from presto_common.errors import BackendUnavailable, ShapeError
from runtime.manifest import Artifact, TensorInfo


class Engine(Protocol):
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]: ...


def ort_session_options(threads: int = 0):
    """onnxruntime.SessionOptions for a CPU session whose runs alternate with torch's CPU ops (the
    sampler's arithmetic, the checks, the reference): errors-only logging, `threads` intra-op
    threads (0: ONNX Runtime's default), and no spinning. By default ONNX Runtime's idle threads
    spin after each run, and the torch op that follows waits for the cores they hold: on the 2-core
    CPU machine a generate of the tiny ONNX build took 76-83 ms with spinning and 27-28 ms without
    (medians of 30, 1 s of audio), the `small` preset's 358-372 against 221-224 ms (2 s)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtEngine:
    """An ONNX file on ONNX Runtime's CPU provider; outputs are fresh CPU tensors."""

    def __init__(self, path: Path, artifact: Artifact, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort_session_options(threads)
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs, self.outputs = artifact.inputs, artifact.outputs
        self._names = [o.name for o in self.outputs]

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if len(inputs) != len(self.inputs):
            raise ShapeError(f"{self.path.name} takes {len(self.inputs)} inputs, got {len(inputs)}")
        feeds = {}
        for info, t in zip(self.inputs, inputs):
            if tuple(t.shape) != info.shape:
                raise ShapeError(
                    f"{self.path.name}: input {info.name} has shape {tuple(t.shape)}, the engine "
                    f"was built for {info.shape}"
                )
            feeds[info.name] = np.ascontiguousarray(t.detach().cpu().numpy())
        return tuple(torch.from_numpy(x) for x in self.session.run(self._names, feeds))


def backend_available(backend: str) -> str | None:
    """None if `backend` can run here, else the reason it cannot."""
    if backend == "onnx":
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"
    if backend == "torch":
        return None
    if backend == "tensorrt":
        if not any(
            importlib.util.find_spec(m)
            for m in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
        ):
            return "TensorRT is not installed; install tensorrt (or tensorrt-rtx) or use --backend torch"
        if not torch.cuda.is_available():
            return (
                "TensorRT engines need a CUDA GPU and none is available; use --backend onnxruntime"
            )
        return None
    return f"unknown backend {backend!r}"


def open_engine(
    folder: Path, artifact: Artifact, device: torch.device, single_threaded: bool = False
) -> Engine:
    """Load one artifact of the build folder as an Engine on `device`."""
    reason = backend_available(artifact.backend)
    if reason:
        raise BackendUnavailable(reason)
    path = folder / artifact.file
    if artifact.backend == "onnx":
        if device.type != "cpu":
            raise BackendUnavailable(
                f"ONNX Runtime runs on the CPU here; got device {device}: use --backend torch on CUDA"
            )
        return OrtEngine(path, artifact)
    if artifact.backend == "tensorrt":
        from runtime.trt_engine import TrtEngine

        return TrtEngine(path, artifact, device)
    from runtime.torch_engine import TorchEngine

    return TorchEngine(path, device=str(device), run_single_threaded=single_threaded)
