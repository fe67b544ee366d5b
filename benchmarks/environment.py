"""Where a benchmark ran: device, driver and library versions, git commit, manifest hash.

Every probe that can fail (no nvidia-smi, no git, a TensorRT that does not import) records None,
and one that fails unexpectedly logs a warning saying so.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from runtime import MANIFEST_FILE, sha256_file

log = logging.getLogger(__name__)

# TensorRT's Python modules, in the order the runtime prefers them (runtime.trt_engine).
TENSORRT_MODULES = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")


def _stdout(argv: list[str], cwd: Path | None = None) -> str | None:
    """A tool's whole stdout, or None when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("%s failed (%s); recording null", argv[0], err)
        return None
    return out.stdout if out.returncode == 0 else None


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    """First line of a tool's stdout, or None when it is missing, fails or prints nothing."""
    lines = (_stdout(argv, cwd) or "").strip().splitlines()
    return lines[0].strip() if lines else None


def git_dirty(repo: Path) -> bool | None:
    """Whether tracked files differ from HEAD; None without git or outside a repository."""
    status = _stdout(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return None if status is None else bool(status.strip())


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi (the first GPU's), or None without nvidia-smi."""
    return _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])


def tensorrt_version() -> tuple[str | None, str | None]:
    """(module, version) of the first TensorRT module that imports, or (None, None)."""
    for name in TENSORRT_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as err:
            log.warning("%s is installed but does not import (%s); trying the next", name, err)
            continue
        return name, getattr(module, "__version__", None)
    return None, None


def onnxruntime_version() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return onnxruntime.__version__


def host_environment() -> dict[str, Any]:
    """Python, platform, CPU, and the git commit (and whether tracked files differ from it)."""
    here = Path(__file__).resolve().parent
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "git_commit": _run(["git", "rev-parse", "HEAD"], cwd=here),
        # Tracked files differing from that commit: the code that ran is not the commit alone.
        "git_dirty": git_dirty(here),
    }


def environment(device: torch.device, engines: Path) -> dict[str, Any]:
    """host_environment, plus device name, driver and library versions and the build's manifest
    sha256."""
    cuda = device.type == "cuda"
    trt_module, trt = tensorrt_version()
    return {
        **host_environment(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_driver": gpu_driver_version(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "tensorrt": trt,
        "tensorrt_module": trt_module,
        "onnxruntime": onnxruntime_version(),
        "manifest_sha256": sha256_file(engines / MANIFEST_FILE),
    }
