"""The packages are leaves where the design says so: `python -m pytest tests/test_import_boundaries.py`.

Each check imports a package and all its modules in a fresh interpreter and lists what got loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def loaded_modules(package: str) -> set[str]:
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "presto_ref",
            {
                "runtime",
                "export",
                "calibration",
                "benchmarks",
                "onnx",
                "tensorrt",
                "tensorrt_rtx",
                "onnxruntime",
            },
        ),
        ("runtime", {"presto_ref", "export", "calibration", "onnx", "tensorrt", "tensorrt_rtx"}),
    ],
)
def test_package_is_a_leaf(package: str, forbidden: set[str]) -> None:
    leaked = roots(loaded_modules(package)) & forbidden
    assert not leaked, f"importing {package} loaded {sorted(leaked)}"
