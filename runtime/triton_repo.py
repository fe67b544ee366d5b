"""The Triton Inference Server workspace `runtime.serve` runs: a model repository and a backend folder.

Triton runs a Python model from a *model repository* (`presto/config.pbtxt` and `presto/1/model.py`)
and loads backends from a *backend directory*. Both come from the `nvidia-pytriton` wheel, which
ships the `tritonserver` binary, the Python backend (`libtriton_python.so`) and one backend stub per
Python version; this module lays them out for the running interpreter, the way PyTriton does, but
with a model of our own (`runtime.triton_model`), because PyTriton's callables answer a whole
batch with one error while Triton's Python backend answers each request on its own.

Two facts about the stub, measured (docs/serving notes): its embedded interpreter finds its
`site-packages` through `PATH` (so the server gets this interpreter's folder first on `PATH`), not
`PYTHONPATH`; and it exchanges tensors through numpy's 1.x ABI (BYTES and INT64 inputs arrive
corrupted under numpy 2, hence `numpy<2` in the `serve` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from presto_common.errors import BackendUnavailable

MODEL_NAME = "presto"

# (name, Triton type, optional): every input has dims [1] after the batch dimension.
INPUTS = (
    ("prompt", "TYPE_STRING", False),
    ("seed", "TYPE_INT64", False),
    ("bpm", "TYPE_FP32", True),
    ("duration_s", "TYPE_FP32", True),
    ("width", "TYPE_FP32", True),
    ("mono", "TYPE_BOOL", True),
)
# audio: (channels, samples) per row; sample_rate: Hz per row.
OUTPUTS = (("audio", "TYPE_FP32", (-1, -1)), ("sample_rate", "TYPE_INT32", (1,)))

_INSTALL_FIX = 'pip install -e ".[serve]" (nvidia-pytriton carries the tritonserver binary)'


@dataclass(frozen=True)
class TritonDist:
    """Where the nvidia-pytriton wheel put the server: binary, backends, stubs, shared libraries."""

    server: Path  # .../pytriton/tritonserver/bin/tritonserver
    backends: Path  # .../pytriton/tritonserver/backends (holds python/)
    stubs: Path  # .../pytriton/tritonserver/python_backend_stubs/<X.Y>/
    libs: Path  # .../nvidia_pytriton.libs (libtritonserver and its bundled libraries)

    @staticmethod
    def find() -> TritonDist:
        """Locate the installed wheel's files without importing pytriton (its deps are unused).

        Raises BackendUnavailable naming what is missing and the install command.
        """
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise BackendUnavailable(f"Triton Inference Server is not installed; {_INSTALL_FIX}")
        root = Path(next(iter(spec.submodule_search_locations)))
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        dist = TritonDist(
            server=root / "tritonserver" / "bin" / "tritonserver",
            backends=root / "tritonserver" / "backends",
            stubs=root / "tritonserver" / "python_backend_stubs" / version,
            libs=root.parent / "nvidia_pytriton.libs",
        )
        for path in (dist.server, dist.backends / "python", dist.stubs, dist.libs):
            if not path.exists():
                raise BackendUnavailable(
                    f"{path} is missing from the nvidia-pytriton install (Python {version} "
                    f"needs a backend stub there); reinstall with {_INSTALL_FIX}"
                )
        return dist

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """`base` plus what the server and its stubs need: this interpreter's folder first on PATH
        (the stub's interpreter takes its site-packages from there) and the shared libraries of
        this interpreter and of the wheel on LD_LIBRARY_PATH."""
        env = dict(base)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}".rstrip(":")
        libdirs = [str(self.libs)]
        libpython = sysconfig.get_config_var("LIBDIR")
        if libpython:
            libdirs.insert(0, libpython)  # the stub links libpython3.X by name: take this one's
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libdirs)
        return env


def write_backends(dist: TritonDist, folder: Path) -> Path:
    """A backend directory holding the Python backend and this interpreter's stub; returns it."""
    python = folder / "python"
    python.mkdir(parents=True)
    for item in (dist.backends / "python").iterdir():
        (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(dist.stubs / "triton_python_backend_stub")
    return folder


@dataclass(frozen=True)
class ModelSettings:
    """What the generated `presto` model is told (config.pbtxt parameters and batching)."""

    engines: Path  # build folder, absolute
    backend: str  # runtime backend name: auto, torch, onnxruntime, tensorrt
    gpus: tuple[int, ...]  # one model instance (one Pipeline) per GPU; () serves on the CPU
    max_batch: int  # rows Triton's dynamic batcher hands the model at most
    preferred_batches: tuple[int, ...]  # the build's batch buckets, ascending
    max_queue_delay_ms: float  # how long the batcher waits to fill a preferred batch
    cuda_graph: bool = True
    warm_up: tuple[bool, ...] = (True, False)  # stereo flags whose buckets are captured at start
    timings_log: Path | None = None  # a JSON line per model execution appended here (triton_model)
    gc_freeze: bool = True  # freeze the start-up heap out of garbage collection (runtime/gc_pauses)


def config_pbtxt(settings: ModelSettings) -> str:
    """The model's config.pbtxt (protobuf text format) for `settings`."""
    inputs = ",\n".join(
        f'  {{ name: "{name}" data_type: {dtype} dims: [ 1 ]'
        + (" optional: true" if optional else "")
        + " }"
        for name, dtype, optional in INPUTS
    )
    outputs = ",\n".join(
        f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'
        for name, dtype, dims in OUTPUTS
    )
    if settings.gpus:
        gpus = ", ".join(map(str, settings.gpus))
        instances = f"instance_group [ {{ kind: KIND_GPU count: 1 gpus: [ {gpus} ] }} ]"
    else:
        instances = "instance_group [ { kind: KIND_CPU count: 1 } ]"
    preferred = [b for b in settings.preferred_batches if b <= settings.max_batch]
    params = {
        "engines": str(settings.engines),
        "backend": settings.backend,
        "cuda_graph": json.dumps(settings.cuda_graph),
        "warm_up": json.dumps(list(settings.warm_up)),
        "timings_log": str(settings.timings_log or ""),
        "gc_freeze": json.dumps(settings.gc_freeze),
    }
    parameters = ",\n".join(
        f'  {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items()
    )
    return (
        f'name: "{MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {settings.max_batch}\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {round(settings.max_queue_delay_ms * 1000)}\n"
        "}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"{instances}\n"
        f"parameters [\n{parameters}\n]\n"
    )


def model_py(paths: list[str]) -> str:
    """The repository's `presto/1/model.py`: puts `paths` (this project and the launcher's
    PYTHONPATH, which the stub does not read) on sys.path and re-exports the model."""
    return (
        '"""Generated by runtime.serve: the presto model is runtime.triton_model."""\n'
        "import sys\n\n"
        f"sys.path[:0] = {paths!r}\n"
        "from runtime.triton_model import TritonPythonModel  # noqa: E402,F401\n"
    )


def write_repository(settings: ModelSettings, folder: Path) -> Path:
    """A model repository with the one `presto` model in `folder`; returns `folder`."""
    model = folder / MODEL_NAME
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(config_pbtxt(settings))
    root = str(Path(__file__).resolve().parent.parent)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    (model / "1" / "model.py").write_text(model_py([root, *extra]))
    return folder
