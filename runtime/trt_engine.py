"""Run a TensorRT or TensorRT-RTX `.plan` with persistent buffers on the caller's CUDA stream.

Written against the API that `tensorrt` (>= 10) and `tensorrt_rtx` share: deserialize, one
execution context per engine, `set_tensor_address` once for persistent input and output buffers,
`execute_async_v3` on the current torch stream. Static shapes only (the manifest's buckets).

Not executed anywhere yet: full TensorRT is not installable on the development machines, and
TensorRT-RTX engines refuse the H100 the project is tested on. The `trt` tests exercise it wherever
both exist; see README "what is verified where".
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from presto_common.errors import ArtifactError, BackendUnavailable, ShapeError
from runtime.manifest import Artifact

log = logging.getLogger(__name__)

REBUILD = "rebuild it with `python -m export.build --backends tensorrt`"


def import_trt(flavor: str) -> ModuleType:
    """The TensorRT module an engine of `flavor` ("tensorrt" or "rtx") needs."""
    names = ("tensorrt",) if flavor == "tensorrt" else ("tensorrt_rtx", "tensorrt_rtx_bindings")
    for name in names:
        if importlib.util.find_spec(name):
            if name == "tensorrt_rtx_bindings":
                importlib.import_module("tensorrt_rtx_libs")  # loads the shared libraries
            return importlib.import_module(name)
    need = "TensorRT >= 10 (tensorrt)" if flavor == "tensorrt" else "TensorRT-RTX (tensorrt-rtx)"
    raise BackendUnavailable(
        f"this build's engines need {need}, which is not installed; install it or use --backend torch"
    )


def check_compute_capability(artifact: Artifact, device: torch.device) -> None:
    """Refuse an engine built for other GPUs than `device` (RTX: its AOT targets)."""
    major, minor = torch.cuda.get_device_capability(device)
    here = f"{major}.{minor}"
    targets = artifact.build.get("compute_capabilities") or []
    built_for = artifact.build.get("cuda_capability")
    if targets and here not in targets:
        raise ArtifactError(
            f"{artifact.file} was built for compute capability {', '.join(targets)}, this GPU is "
            f"{here}; rebuild with `python -m export.build --trt rtx --compute-capabilities {here}` "
            f"(RTX has no sm_90 target: on Hopper use --trt tensorrt)"
        )
    if built_for and built_for != here:
        raise ArtifactError(
            f"{artifact.file} was built on a {built_for} GPU, this one is {here}; {REBUILD}"
        )


class TrtEngine:
    """One engine, one execution context, persistent buffers. Outputs ARE the engine's buffers:
    the next call overwrites them, so clone what you keep."""

    def __init__(self, path: Path, artifact: Artifact, device: torch.device) -> None:
        if device.type != "cuda":
            raise BackendUnavailable(f"TensorRT engines run on CUDA devices; got {device}")
        flavor = artifact.build.get("trt", "tensorrt")
        trt = import_trt(flavor)
        check_compute_capability(artifact, device)
        self.path, self.device = path, device
        self.inputs, self.outputs = artifact.inputs, artifact.outputs
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        with torch.cuda.device(device):
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise ArtifactError(
                    f"{path} could not be deserialized by {trt.__name__} {trt.__version__}; {REBUILD}"
                )
            if hasattr(self.engine, "create_runtime_config"):  # TensorRT-RTX
                self.context = self.engine.create_execution_context(
                    self.engine.create_runtime_config()
                )
            else:
                self.context = self.engine.create_execution_context()
            self.buffers: dict[str, Tensor] = {}
            for info in (*self.inputs, *self.outputs):
                shape = tuple(self.engine.get_tensor_shape(info.name))
                if shape != info.shape:
                    raise ArtifactError(
                        f"{path}: tensor {info.name} is {shape} in the engine, {info.shape} in "
                        f"the manifest; {REBUILD}"
                    )
                dtype = getattr(torch, info.dtype)
                self.buffers[info.name] = torch.empty(info.shape, dtype=dtype, device=device)
                self.context.set_tensor_address(info.name, self.buffers[info.name].data_ptr())

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if len(inputs) != len(self.inputs):
            raise ShapeError(f"{self.path.name} takes {len(self.inputs)} inputs, got {len(inputs)}")
        for info, t in zip(self.inputs, inputs):
            if tuple(t.shape) != info.shape:
                raise ShapeError(
                    f"{self.path.name}: input {info.name} has shape {tuple(t.shape)}, the engine "
                    f"was built for {info.shape}"
                )
            self.buffers[info.name].copy_(t)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise ArtifactError(
                f"{self.path.name}: execute_async_v3 failed (see TensorRT's log above)"
            )
        return tuple(self.buffers[o.name] for o in self.outputs)
