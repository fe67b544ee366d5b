"""The PyTorch backend: torch.export plus AOTInductor, one `.pt2` package per graph.

`compile_package` exports a module at static shapes (the sample inputs' shapes are the bucket),
compiles it ahead of time with Inductor (C++ kernels on the CPU, Triton kernels on CUDA), and packages
the shared library, with the weights baked in, as a `.pt2` file that `runtime.torch_engine.TorchEngine`
loads without Python model code. The input and output signatures go into the package metadata,
because AOTInductor does not check inputs at run time and the engine does.

The host C++ compiler builds the package's wrapper library, and Inductor takes it from `CXX`. On our
GPU image `CXX=/opt/gcc/bin/g++`, whose libraries crash on load (a segfault in std::regex while the
model parses its device string); build there with `CXX=/usr/bin/g++`, the system compiler.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from export.onnx_export import TREESPEC_WARNING
from presto_common.errors import BackendUnavailable, EngineBuildError
from runtime.manifest import TensorInfo
from runtime.torch_engine import META_CUSTOM_OPS, signature_metadata

log = logging.getLogger(__name__)

# Inductor settings for an inference build. max_autotune benchmarks GEMM/conv templates and Triton
# configs at compile time: a few percent faster kernels for minutes of build time per graph, so it
# is opt-in through `options`. The AOTI-specific defaults are kept: weights baked into the .so,
# switched to an mmapped blob automatically past 2 GB of constants.
#
# comprehensive_padding is off because it miscompiles the DiT's attention (torch 2.11, H100): it
# pads the (T x head) stride of the attention inputs from 1470 * 72 to a multiple of 128 bytes and
# then views the unpadded buffer with the padded strides. In fp32 the package fails at run time
# ("setStorage ... out of bounds"); in bf16 it runs and returns x0 with 1.0e-1 relative L2 error
# against fp32, where eager bf16 gives 1.5e-2 and the package built without padding 1.0e-2
# (docs/measurements.md, "Inductor variants of the DiT", has the figures).
DEFAULT_OPTIONS: Mapping[str, Any] = {"max_autotune": False, "comprehensive_padding": False}


@dataclass(frozen=True)
class TorchBuild:
    """One compiled package and how it was made."""

    path: Path
    size_bytes: int
    build_s: float  # wall time of export plus compilation, seconds
    device: str  # "cpu" or "cuda:N", where it was compiled and must run
    torch_version: str


def compile_package(
    module: nn.Module,
    sample_inputs: tuple[Tensor, ...],
    path: Path,
    *,
    device: str,
    options: Mapping[str, Any] | None = None,
) -> TorchBuild:
    """Export `module` at the shapes of `sample_inputs` and compile it to an AOTInductor package.

    module and sample_inputs must already be on `device`; the module is exported in eval mode (its
    training flag is restored afterwards). The inputs' shapes and dtypes are the package's static
    signature. `options` are Inductor config entries (e.g. {"max_autotune": True}) that override
    `DEFAULT_OPTIONS`. The package is written to a temporary folder beside `path`, then renamed
    into place, so a failed build leaves nothing at `path`.

    Raises BackendUnavailable (CUDA asked for but absent) or EngineBuildError (anything that fails
    in export or compilation; the original exception is chained).
    """
    path = Path(path)
    target = _check_device(device)
    if path.suffix != ".pt2":
        raise EngineBuildError(f"package path {path} must end in .pt2 (AOTInductor requires it)")
    _check_placement(module, sample_inputs, target)
    # The graph is compiled for the sample strides; the engine only accepts contiguous inputs.
    sample_inputs = tuple(t.contiguous() for t in sample_inputs)
    config = {**DEFAULT_OPTIONS, **(options or {})}
    name = type(module).__name__

    was_training = module.training
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A folder rather than a file, so the archive's inner folder keeps the final file's stem.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    start = time.perf_counter()
    try:
        # 1. Export. no_grad rather than inference_mode: export refuses inference tensors.
        with torch.no_grad(), _quiet_treespec():
            try:
                exported = torch.export.export(module, sample_inputs)
            except Exception as err:
                raise EngineBuildError(
                    f"torch.export failed for {name} on {target}: {_first_line(err)}"
                ) from err
        inputs, outputs = _signature(exported, name)
        metadata = {
            **config.get("aot_inductor.metadata", {}),
            **signature_metadata(inputs, outputs),
            **_custom_ops_metadata(exported),
        }
        config["aot_inductor.metadata"] = metadata
        export_s = time.perf_counter() - start

        # 2. Compile and package: the slow part (silent for up to a minute per graph), so say so first.
        log.info("compiling %s for %s (this can take a minute or more) ...", name, target)
        tmp_path = tmp_dir / path.name
        with torch.no_grad(), _quiet_treespec():
            try:
                torch._inductor.aoti_compile_and_package(
                    exported, package_path=str(tmp_path), inductor_configs=config
                )
            except Exception as err:
                raise EngineBuildError(
                    f"AOTInductor compilation failed for {name} on {target}: {_first_line(err)}"
                ) from err
        tmp_path.replace(path)
    finally:
        module.train(was_training)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # only non-empty when the build failed
    build_s = time.perf_counter() - start
    size = path.stat().st_size
    log.info(
        "compiled %s on %s in %.1f s (export %.1f s): %s, %.1f MB",
        name,
        target,
        build_s,
        export_s,
        path,
        size / 1e6,
    )
    return TorchBuild(path, size, build_s, str(target), torch.__version__)


# --- checks and helpers ---------------------------------------------------------------------------


def _custom_ops_metadata(exported: torch.export.ExportedProgram) -> dict[str, str]:
    """{META_CUSTOM_OPS: JSON list} of the project's ops ("presto::...") the graph calls, so that
    the runtime registers them before loading the package; {} when it calls none."""
    ops = sorted(
        {
            node.target.name()
            for node in exported.graph.nodes
            if node.op == "call_function"
            and isinstance(node.target, torch._ops.OpOverload)
            and node.target.namespace == "presto"
        }
    )
    return {META_CUSTOM_OPS: json.dumps(ops)} if ops else {}


def _check_device(device: str) -> torch.device:
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise EngineBuildError(
            f"device={device!r} is not a torch device; use 'cpu' or 'cuda'"
        ) from err
    if target.type not in ("cpu", "cuda"):
        raise EngineBuildError(f"device={device!r}: the torch backend builds for 'cpu' or 'cuda'")
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"device={device!r} but torch {torch.__version__} sees no CUDA device; build on a "
                f"GPU machine or for device 'cpu'"
            )
        # Name the index, so TorchBuild.device says which GPU the kernels were compiled on.
        index = target.index if target.index is not None else torch.cuda.current_device()
        target = torch.device("cuda", index)
    return target


def _check_placement(
    module: nn.Module, sample_inputs: tuple[Tensor, ...], target: torch.device
) -> None:
    """Inputs, parameters and buffers must all be on `target`: export bakes in their devices."""

    def on_target(t: Tensor) -> bool:
        return t.device.type == target.type and (target.type == "cpu" or t.device == target)

    for i, t in enumerate(sample_inputs):
        if not isinstance(t, Tensor):
            raise EngineBuildError(f"sample input {i} is a {type(t).__name__}; pass tensors only")
        if not on_target(t):
            raise EngineBuildError(f"sample input {i} is on {t.device}; move it to {target} first")
    for where, t in [*module.named_parameters(), *module.named_buffers()]:
        if not on_target(t):
            raise EngineBuildError(
                f"{where} of the module is on {t.device}; call .to({str(target)!r})"
            )


def _signature(
    exported: torch.export.ExportedProgram, name: str
) -> tuple[tuple[TensorInfo, ...], ...]:
    """(inputs, outputs) of the exported graph as TensorInfo, inputs named as in forward()."""
    nodes = {n.name: n for n in exported.graph.nodes}

    def info(node_name: Any, label: str) -> TensorInfo:
        value = nodes[node_name].meta.get("val") if isinstance(node_name, str) else None
        if not isinstance(value, Tensor):
            raise EngineBuildError(
                f"{name}'s {label} is not a tensor ({value!r}); the engine takes and returns tensors"
            )
        return TensorInfo(label, str(value.dtype).removeprefix("torch."), tuple(value.shape))

    sig = exported.graph_signature
    inputs = tuple(info(n, n) for n in sig.user_inputs)
    outputs = tuple(info(n, f"output{i}") for i, n in enumerate(sig.user_outputs))
    return inputs, outputs


@contextlib.contextmanager
def _quiet_treespec() -> Iterator[None]:
    """Hide torch's own FutureWarning that `isinstance(treespec, LeafSpec)` is deprecated: torch
    2.13 raises it when it deep-copies a pytree spec while exporting and compiling, and no caller
    can change that. Every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", TREESPEC_WARNING, FutureWarning)
        yield


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
