"""Build TensorRT or TensorRT-RTX engines from static-shape ONNX files, through Polygraphy's API.

Two flavors share this code: full TensorRT (`tensorrt` >= 10, engines for the GPU that builds them)
and TensorRT-RTX (`tensorrt_rtx`, ahead-of-time engines for listed compute capabilities, buildable
on a machine with no GPU). Networks are strongly typed, so precision comes from the ONNX types.

Polygraphy chooses its TensorRT module once per process, when `polygraphy.config` is first imported
(environment variable POLYGRAPHY_USE_TENSORRT_RTX). `import_tensorrt` sets that variable, so call it
before anything imports polygraphy (the ONNX export does); one process builds one flavor.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from presto_common.errors import BackendUnavailable, ConfigError, EngineBuildError

log = logging.getLogger(__name__)

TRT_FLAVORS = ("tensorrt", "rtx")
DEFAULT_RTX_COMPUTE_CAPABILITIES = ("8.0",)  # A100, the product target; RTX has no sm_90 target
POLYGRAPHY_RTX_ENV = "POLYGRAPHY_USE_TENSORRT_RTX"

TensorSpec = tuple[str, str, tuple[int, ...]]  # (name, numpy-style dtype, shape)

# trt.DataType member name -> numpy / ml_dtypes spelling (the manifest's dtype strings).
# fmt: off
_DTYPE_NAMES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "FP8": "float8_e4m3fn",
    "FP4": "float4_e2m1fn", "E8M0": "float8_e8m0fnu", "INT4": "int4", "INT8": "int8",
    "UINT8": "uint8", "INT32": "int32", "INT64": "int64", "BOOL": "bool",
}
# fmt: on


@dataclass(frozen=True)
class EngineBuild:
    """What `build_engine` wrote; inputs and outputs are read from the parsed network."""

    engine_path: Path
    size_bytes: int
    build_s: float  # parse + build, wall clock
    flavor: str  # one of TRT_FLAVORS
    trt_version: str
    compute_capabilities: tuple[str, ...]  # RTX targets ("8.0"); empty = built for this GPU
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# --- importing TensorRT and Polygraphy


def import_tensorrt(flavor: str) -> ModuleType:
    """Import the TensorRT module of `flavor` and point Polygraphy at it.

    For "rtx" the module is `tensorrt_rtx`, which only the small metapackage `tensorrt-rtx-cu13`
    provides (its `__init__` is `from tensorrt_rtx_bindings import *`). With just the wheels
    `tensorrt-rtx-cu13-bindings` and `tensorrt-rtx-cu13-libs` we import `tensorrt_rtx_bindings` and
    register it as `sys.modules["tensorrt_rtx"]`: Polygraphy imports `tensorrt_rtx` by name through
    importlib, which returns the registered module.
    """
    _check_flavor(flavor)
    if flavor == "tensorrt":
        try:
            import tensorrt as trt
        except ImportError as err:
            raise BackendUnavailable(
                f"--trt tensorrt: the tensorrt module is not importable ({err}); "
                "install TensorRT >= 10 (pip install tensorrt-cu12) or use --trt rtx"
            ) from err
    else:
        try:
            import tensorrt_rtx as trt
        except ImportError:
            try:
                # The libs wheel first: it loads libtensorrt_rtx.so.1 that the bindings link to.
                import tensorrt_rtx_libs  # noqa: F401

                trt = importlib.import_module("tensorrt_rtx_bindings")
            except ImportError as err:
                raise BackendUnavailable(
                    f"--trt rtx: neither tensorrt_rtx nor tensorrt_rtx_bindings is importable "
                    f"({err}); pip install tensorrt-rtx-cu13-bindings==1.7.1.116 "
                    "tensorrt-rtx-cu13-libs==1.7.1.116"
                ) from err
            sys.modules["tensorrt_rtx"] = trt
    _pin_polygraphy_flavor(flavor)
    return trt


def polygraphy_flavor() -> str | None:
    """The flavor Polygraphy is bound to in this process, or None if it is not imported yet."""
    config = sys.modules.get("polygraphy.config")
    if config is None:
        return None
    return "rtx" if config.USE_TENSORRT_RTX else "tensorrt"


def _pin_polygraphy_flavor(flavor: str) -> None:
    bound = polygraphy_flavor()
    if bound is None:
        # Polygraphy reads this once, when polygraphy.config is first imported.
        os.environ[POLYGRAPHY_RTX_ENV] = "1" if flavor == "rtx" else "0"
    elif bound != flavor:
        raise BackendUnavailable(
            f"--trt {flavor}: polygraphy was already imported for --trt {bound} in this process "
            f"({POLYGRAPHY_RTX_ENV}={os.environ.get(POLYGRAPHY_RTX_ENV, 'unset')}); one process "
            f"builds one flavor: build {flavor} engines in a separate process"
        )


def _check_flavor(flavor: str) -> None:
    if flavor not in TRT_FLAVORS:
        raise ConfigError(f"TensorRT flavor {flavor!r} is not one of {TRT_FLAVORS}")


@contextlib.contextmanager
def _polygraphy_errors() -> Iterator[list[str]]:
    """Route Polygraphy's log (and TensorRT's, which it forwards) to `logging`; collect errors.

    Polygraphy reports parser and builder errors as log lines, then raises a generic exception;
    the collected lines give the actual cause.
    """
    from polygraphy.logger import G_LOGGER

    errors: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    handler = _Collect(level=logging.ERROR)
    saved = (G_LOGGER.use_python_logging_system, G_LOGGER.letter, G_LOGGER.colors)
    G_LOGGER.use_python_logging_system, G_LOGGER.letter, G_LOGGER.colors = True, False, False
    polygraphy_log = logging.getLogger("Polygraphy")
    polygraphy_log.addHandler(handler)
    polygraphy_log.addFilter(_demote_int64_binding)
    try:
        yield errors
    finally:
        polygraphy_log.removeFilter(_demote_int64_binding)
        polygraphy_log.removeHandler(handler)
        G_LOGGER.use_python_logging_system, G_LOGGER.letter, G_LOGGER.colors = saved


# The ONNX parser warns "Make sure input ids has Int64 binding." once per engine with int64 ids
# (the text encoder). The manifest records ids as int64 and the runtime binds what it says, so no
# one can act on it: it is logged at DEBUG (-v) instead of WARNING.
INT64_BINDING = re.compile(r"Make sure input \S+ has Int64 binding")


def _demote_int64_binding(record: logging.LogRecord) -> bool:
    if record.levelno > logging.DEBUG and INT64_BINDING.search(record.getMessage()):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


def _first_line(errors: list[str], err: Exception) -> str:
    text = next((e for e in errors if e.strip()), str(err))
    return " ".join(text.split())  # Polygraphy indents multi-line messages; keep one line


# --- parsing and building


def _network_io(network) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    def spec(t) -> TensorSpec:
        return t.name, _DTYPE_NAMES.get(t.dtype.name, t.dtype.name.lower()), tuple(t.shape)

    return (
        tuple(spec(network.get_input(i)) for i in range(network.num_inputs)),
        tuple(spec(network.get_output(i)) for i in range(network.num_outputs)),
    )


def _parse(onnx_path: Path, flavor: str, errors: list[str]) -> tuple:
    """(builder, network, parser) for a strongly typed network parsed from `onnx_path`."""
    from polygraphy.backend.trt import network_from_onnx_path
    from polygraphy.exception import PolygraphyException

    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file {onnx_path} does not exist; export it first")
    try:
        # STRONGLY_TYPED is the only network flag RTX has and is always on in TensorRT 11;
        # on TensorRT 10 it makes precision follow the ONNX types instead of builder flags.
        return network_from_onnx_path(str(onnx_path), strongly_typed=True)
    except PolygraphyException as err:
        raise EngineBuildError(
            f"TensorRT ({flavor}) could not parse {onnx_path}: {_first_line(errors, err)}"
        ) from err


def network_io(
    onnx_path: Path, flavor: str
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Parse `onnx_path` (no build) and return the network's (inputs, outputs)."""
    import_tensorrt(flavor)
    with _polygraphy_errors() as errors:
        _, network, _ = _parse(Path(onnx_path), flavor, errors)
    return _network_io(network)


def _parse_compute_capability(text: str, trt: ModuleType) -> tuple[int, int]:
    supported = [
        f"{name[2:-1]}.{name[-1]}" for name in trt.ComputeCapability.__members__ if name[:2] == "SM"
    ]
    match = re.fullmatch(r"(\d+)\.(\d)", text)
    if not match or not hasattr(trt.ComputeCapability, f"SM{match[1]}{match[2]}"):
        raise ConfigError(
            f"compute capability {text!r} is not a TensorRT-RTX {trt.__version__} target; "
            f"expected one of {', '.join(supported)}"
        )
    return int(match[1]), int(match[2])


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    flavor: str,
    compute_capabilities: list[str] | None = None,
    timing_cache: Path | None = None,
    optimization_level: int = 3,
    decomposable_attention: bool = False,
    trt_module: ModuleType | None = None,
    log: logging.Logger = log,
) -> EngineBuild:
    """Build a static-shape engine from `onnx_path` and write it to `engine_path` atomically.

    RTX: `compute_capabilities` ("8.0" style, default 8.0) are the AOT targets. Full TensorRT:
    builds for this GPU at `optimization_level`, with `timing_cache` loaded if present and saved.
    `decomposable_attention` lets ONNX Attention nodes (opset 23) with no fused kernel for their
    dtype fall back to MatMul-Softmax-MatMul; RTX 1.7.1 has none for fp32 and fails without it.
    `trt_module` is what `import_tensorrt(flavor)` returned, for callers that build many engines;
    None imports it here.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trt = trt_module if trt_module is not None else import_tensorrt(flavor)
    if flavor == "tensorrt" and compute_capabilities:
        raise ConfigError(
            f"compute_capabilities={compute_capabilities} needs --trt rtx; full TensorRT builds "
            "for the GPU it runs on"
        )
    if flavor == "rtx" and timing_cache is not None:
        raise ConfigError(f"timing_cache={timing_cache} needs --trt tensorrt; RTX has none")
    targets = (
        tuple(compute_capabilities or DEFAULT_RTX_COMPUTE_CAPABILITIES) if flavor == "rtx" else ()
    )
    sm_tuples = [_parse_compute_capability(cc, trt) for cc in targets]

    from polygraphy.backend.trt import (
        CreateConfig,
        PostprocessConfig,
        engine_bytes_from_network,
        set_decomposable_attentions,
    )
    from polygraphy.exception import PolygraphyException

    start = time.perf_counter()
    with _polygraphy_errors() as errors:
        network_tuple = _parse(onnx_path, flavor, errors)
        if decomposable_attention:
            network_tuple = set_decomposable_attentions(network_tuple)
        inputs, outputs = _network_io(network_tuple[1])
        dynamic = [(name, shape) for name, _, shape in inputs if any(d < 0 for d in shape)]
        if dynamic:
            raise EngineBuildError(
                f"{onnx_path} has dynamic input shapes {dynamic}; engines here are static: "
                "export with fixed shapes for each bucket"
            )
        if flavor == "rtx":
            from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

            # No timing cache: RTX picks kernels when a context is created on the GPU (JIT, kept
            # in its runtime cache), and its docs say a timing cache forces a GPU query that
            # prevents CPU-only AOT builds. Polygraphy still attaches an empty one; RTX 1.7.1
            # treats it as a no-op and builds without a GPU.
            config = CreateConfigRTX(compute_capabilities=sm_tuples)
            # TF32 is on by default in RTX; fp32 graphs must stay fp32 for parity, as in full
            # TensorRT where Polygraphy's CreateConfig clears it.
            config = PostprocessConfig(config, lambda _b, _n, c: c.clear_flag(trt.BuilderFlag.TF32))
            save_cache = None
        else:
            cache_in = timing_cache if timing_cache is not None and timing_cache.is_file() else None
            config = CreateConfig(
                builder_optimization_level=optimization_level,
                load_timing_cache=str(cache_in) if cache_in else None,
            )
            save_cache = str(timing_cache) if timing_cache is not None else None
        where = f"sm {','.join(targets)}" if targets else "this GPU"
        log.info("building %s engine for %s from %s (this can take minutes) ...", flavor, where,
                 onnx_path.name)  # fmt: skip
        try:
            with warnings.catch_warnings():
                # CreateConfigRTX attaches an empty timing cache (see above); RTX warns that it
                # is a no-op on every build.
                warnings.filterwarnings(
                    "ignore", "Use Deprecated in TensorRT-RTX 1.2. Timing cache"
                )
                engine = engine_bytes_from_network(
                    network_tuple, config=config, save_timing_cache=save_cache
                )
        except PolygraphyException as err:
            raise EngineBuildError(
                f"TensorRT ({flavor}) could not build {onnx_path}: {_first_line(errors, err)}"
            ) from err
    build_s = time.perf_counter() - start
    _write_atomically(engine, engine_path)
    result = EngineBuild(
        engine_path=engine_path,
        size_bytes=engine_path.stat().st_size,
        build_s=build_s,
        flavor=flavor,
        trt_version=trt.__version__,
        compute_capabilities=targets,
        inputs=inputs,
        outputs=outputs,
    )
    log.info("built %s (%s %s, %s, %d bytes) in %.1f s", engine_path, flavor, trt.__version__,
             where, result.size_bytes, build_s)  # fmt: skip
    return result


def _write_atomically(data: object, path: Path) -> None:
    """Write a bytes-like object (trt.IHostMemory) to a temporary sibling, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # open() keeps the umask's file mode
    try:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after a successful rename; removes a partial write
