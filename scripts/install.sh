#!/usr/bin/env bash
# Creates .venv at the project root and installs everything the reference, the export tools and the
# tests need, on a CPU-only Linux x86-64 machine with Python 3.11 (what CI uses). torch is pinned to
# the CPU build first: an unpinned torch would pull gigabytes of CUDA wheels.
# Usage: bash scripts/install.sh   (idempotent; re-run after pulling)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[ref,export,rtx,dev]"
.venv/bin/python -c "import torch, onnx, onnxruntime, polygraphy, tensorrt_rtx_bindings; print('torch', torch.__version__, '| onnx', onnx.__version__, '| onnxruntime', onnxruntime.__version__, '| tensorrt-rtx', tensorrt_rtx_bindings.__version__)"
