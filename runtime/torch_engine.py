"""Run an AOTInductor `.pt2` package built by `export.torch_backend` (the PyTorch backend).

A package holds one compiled graph: a shared library with the weights baked in (mmapped past 2 GB),
the generated C++ for reference, and metadata. AOTInductor itself does not check inputs at run time
(only with the `AOTI_RUNTIME_CHECK_INPUTS` environment variable), and a tensor of the wrong shape,
dtype or layout is read as if it had the right one. So export records the input and output
signatures in the package metadata, and `TorchEngine` checks every call against them.

The package is compiled for one device type (CPU packages also for the build host's vector ISA, CUDA
packages for one compute capability): a CUDA package loads on a GPU of that capability only.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import zipfile
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from presto_common.errors import ArtifactError, BackendUnavailable, ShapeError
from runtime.manifest import TensorInfo

log = logging.getLogger(__name__)

# Keys of the package metadata (AOTInductor's `aot_inductor.metadata`, string values only) that
# export writes and the engine reads; JSON lists of {"name", "dtype", "shape"}.
META_INPUTS = "presto.inputs"
META_OUTPUTS = "presto.outputs"
# A JSON list of the project's own ops ("presto::...") the graph calls, when it calls any, and the
# module that registers each: imported before such a package loads (its calls resolve by name).
META_CUSTOM_OPS = "presto.custom_ops"
CUSTOM_OP_MODULES = {"presto::attention_fp8": "runtime.fp8_attention"}
# AOTInductor's own keys: "cpu" or "cuda", and major * 10 + minor of the GPU it was compiled on.
META_DEVICE = "AOTI_DEVICE_KEY"
META_CAPABILITY = "AOTI_COMPUTE_CAPABILITY"
# Where AOTInductor puts a model's metadata inside the zip archive, after the archive's own folder.
_METADATA_SUFFIX = "wrapper_metadata.json"
_MODEL_NAME = "model"  # the name aoti_compile_and_package gives the one model of a package
_MODEL_DIR = f"/data/aotinductor/{_MODEL_NAME}/"

REBUILD = "rebuild it with `python -m export.build`"


def signature_metadata(
    inputs: tuple[TensorInfo, ...], outputs: tuple[TensorInfo, ...]
) -> dict[str, str]:
    """The metadata entries that describe a graph's inputs and outputs (for `aot_inductor.metadata`)."""

    def encode(infos: tuple[TensorInfo, ...]) -> str:
        return json.dumps(
            [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in infos]
        )

    return {META_INPUTS: encode(inputs), META_OUTPUTS: encode(outputs)}


def read_package_metadata(path: Path) -> dict[str, str]:
    """The metadata of the AOTInductor model in a `.pt2` package, read without loading it.

    Raises ArtifactError if the file is missing, not a zip archive or holds no AOTInductor model.
    """
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; {REBUILD}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [
                n for n in archive.namelist() if _MODEL_DIR in n and n.endswith(_METADATA_SUFFIX)
            ]
            if len(names) != 1:
                raise ArtifactError(
                    f"{path} holds {len(names)} AOTInductor models, expected 1; it was not written "
                    f"by export.torch_backend, {REBUILD}"
                )
            return json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as err:
        raise ArtifactError(
            f"{path} is not a readable .pt2 package ({err}); the file is corrupt, {REBUILD}"
        ) from err


def _decode(path: Path, metadata: dict[str, str], key: str) -> tuple[TensorInfo, ...]:
    if key not in metadata:
        raise ArtifactError(
            f"{path} has no {key!r} metadata, so its inputs cannot be checked; it was not written "
            f"by export.torch_backend, {REBUILD}"
        )
    try:
        return tuple(
            TensorInfo(d["name"], d["dtype"], tuple(int(s) for s in d["shape"]))
            for d in json.loads(metadata[key])
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path} has invalid {key!r} metadata ({err}); {REBUILD}") from err


def _resolve_device(path: Path, metadata: dict[str, str], device: str | None) -> torch.device:
    """The device to load the package on: its own device type, at `device`'s index if given."""
    built_for = metadata.get(META_DEVICE)
    if built_for not in ("cpu", "cuda"):
        raise ArtifactError(
            f"{path} was compiled for device {built_for!r}; this runtime runs 'cpu' and 'cuda' "
            f"packages, {REBUILD}"
        )
    wanted = torch.device(device) if device is not None else torch.device(built_for)
    if wanted.type != built_for:
        raise ArtifactError(
            f"{path} was compiled for {built_for}, but device={device!r} was asked for; rebuild it "
            f"for {wanted.type} with `python -m export.build`"
        )
    if built_for == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"{path} is a CUDA package but torch {torch.__version__} sees no CUDA device; run it on "
            f"a GPU machine or rebuild it for the CPU with `python -m export.build`"
        )
    index = wanted.index if wanted.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    built_cc = metadata.get(META_CAPABILITY, "")
    # The kernels are compiled for the build GPU's architecture; on another one they fail at launch.
    if built_cc and built_cc != f"{major}{minor}":
        raise ArtifactError(
            f"{path} was compiled for sm_{built_cc}, but cuda:{index} is sm_{major}{minor}; "
            f"rebuild it on this GPU with `python -m export.build`"
        )
    return torch.device("cuda", index)


def register_custom_ops(path: Path, metadata: dict[str, str], device: torch.device) -> list[str]:
    """Import the module of each custom op the package calls (META_CUSTOM_OPS) and let it check
    `device` (FP8 attention on CUDA needs cudnn-frontend: BackendUnavailable with the pip line);
    the ops' names. ArtifactError for an op this runtime does not provide."""
    ops = json.loads(metadata.get(META_CUSTOM_OPS, "[]"))
    for op in ops:
        if op not in CUSTOM_OP_MODULES:
            raise ArtifactError(
                f"{path} calls the custom op {op}, which this runtime does not provide (it has "
                f"{', '.join(sorted(CUSTOM_OP_MODULES))}); update presto-trt, or {REBUILD}"
            )
        importlib.import_module(CUSTOM_OP_MODULES[op]).check_device(device)
    return ops


# --- engine ---------------------------------------------------------------------------------------


class TorchEngine:
    """One AOTInductor package, loaded once and called like a function.

    `engine(*inputs)` takes the inputs in the order, shapes and dtypes of `engine.inputs`,
    contiguous and on `engine.device`, and returns a tuple of tensors shaped as `engine.outputs`.
    The outputs are fresh tensors allocated by the compiled graph on every call (from the CUDA
    caching allocator on a GPU), so they may be kept; nothing is written into caller buffers.

    Calls run on the current CUDA stream. By default concurrent calls from several threads are
    serialised by AOTInductor's own model container. `run_single_threaded=True` drops that
    container's locking and per-call completion events, which CUDA graph capture needs; the engine
    then serialises calls with its own lock.
    """

    def __init__(
        self, path: str | Path, *, device: str | None = None, run_single_threaded: bool = False
    ) -> None:
        """Load `path` on `device` ("cpu", "cuda", "cuda:1"; None: the device type it was built for).

        Raises ArtifactError (missing, corrupt, foreign or built for another device) or
        BackendUnavailable (a CUDA package without a CUDA device).
        """
        self.path = Path(path)
        self.metadata = read_package_metadata(self.path)
        self.inputs = _decode(self.path, self.metadata, META_INPUTS)
        self.outputs = _decode(self.path, self.metadata, META_OUTPUTS)
        self.device = _resolve_device(self.path, self.metadata, device)
        self._dtypes = tuple(_torch_dtype(self.path, i.dtype) for i in self.inputs)
        self._lock = threading.Lock() if run_single_threaded else None
        self.custom_ops = register_custom_ops(self.path, self.metadata, self.device)

        # The C++ loader that torch._inductor.aoti_load_package wraps, called directly: the Python
        # wrapper imports Inductor and Triton and compiles a CPU-ISA probe with the host C++
        # compiler just to log a warning (2 s on a laptop, about a minute on a fresh GPU machine),
        # and retries any failure with a misleading "outdated pt2 file" warning. Arguments: file,
        # model name inside the package, single-threaded, number of runners, device index.
        loader_cls = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
        if loader_cls is None:
            raise BackendUnavailable(
                f"torch {torch.__version__} has no AOTInductor package loader "
                f"(torch._C._aoti.AOTIModelPackageLoader), so {self.path} cannot run here; "
                f"install torch >= 2.6"
            )
        # The loader makes the package's GPU current and leaves it so; the guard restores the
        # caller's, so that loading on cuda:1 does not turn a later "cuda" into cuda:1.
        guard = torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()
        try:
            with guard:
                self._loader = loader_cls(
                    str(self.path),
                    _MODEL_NAME,
                    run_single_threaded,
                    1,  # one runner: concurrent calls wait for it (see the class docstring)
                    # -1 would mean "the current CUDA device"; be explicit so the device holds.
                    self.device.index if self.device.type == "cuda" else -1,
                )
        except RuntimeError as err:
            raise ArtifactError(
                f"{self.path} could not be loaded ({str(err).splitlines()[0]}); it may be from "
                f"another torch version than {torch.__version__} or another machine, {REBUILD}"
            ) from err
        log.debug("loaded %s on %s (%d inputs)", self.path, self.device, len(self.inputs))

    def __repr__(self) -> str:
        return f"TorchEngine({str(self.path)!r}, device={str(self.device)!r})"

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """Run the graph once; see the class docstring for what the inputs must be and the outputs are.

        Raises ShapeError, before any work, if an input differs from the built signature.
        """
        self._check(inputs)
        # The loader takes and returns flat tensor lists, whatever structure forward() had.
        if self._lock is None:
            return tuple(self._loader.run(list(inputs)))
        with self._lock:
            return tuple(self._loader.run(list(inputs)))

    def _check(self, inputs: tuple[Tensor, ...]) -> None:
        if len(inputs) != len(self.inputs):
            names = ", ".join(i.name for i in self.inputs)
            raise ShapeError(
                f"{self.path.name} takes {len(self.inputs)} inputs ({names}), got {len(inputs)}"
            )
        for tensor, info, dtype in zip(inputs, self.inputs, self._dtypes):
            if not isinstance(tensor, Tensor):
                raise ShapeError(
                    f"input {info.name!r} of {self.path.name} must be a tensor, got "
                    f"{type(tensor).__name__}"
                )
            if tuple(tensor.shape) != info.shape:
                raise ShapeError(
                    f"input {info.name!r} of {self.path.name} has shape {tuple(tensor.shape)}, but "
                    f"the package was built for {info.shape}; use a built bucket or rebuild with "
                    f"`python -m export.build` for this one"
                )
            if tensor.dtype != dtype:
                raise ShapeError(
                    f"input {info.name!r} of {self.path.name} is {tensor.dtype}, expected {dtype}"
                )
            if tensor.device != self.device:
                raise ShapeError(
                    f"input {info.name!r} of {self.path.name} is on {tensor.device}, but the "
                    f"engine runs on {self.device}; move it there first"
                )
            # The graph was compiled for contiguous strides and would misread any other layout.
            if not tensor.is_contiguous():
                raise ShapeError(
                    f"input {info.name!r} of {self.path.name} is not contiguous (strides "
                    f"{tensor.stride()}); pass tensor.contiguous()"
                )


def _torch_dtype(path: Path, name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"{path} declares an input of unknown dtype {name!r}; {REBUILD}")
    return dtype
