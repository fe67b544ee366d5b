#!/usr/bin/env bash
# Creates .venv at the project root and installs everything the reference, the export tools and the
# tests need, on a CPU-only Linux x86-64 machine with Python 3.11 (what CI uses). torch is pinned to
# the CPU build first: an unpinned torch would pull gigabytes of CUDA wheels.
# Usage: bash scripts/install.sh   (idempotent; re-run after pulling)
# Each step prints one line before it starts, with a rough time (a fresh machine; a re-run is quicker).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "install.sh: $* ..." >&2; }
start=$SECONDS
step "creating .venv and upgrading pip (seconds)"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
step "installing torch==2.13.0, the CPU build (about a minute)"
.venv/bin/python -m pip install -q "torch==2.13.0"
step "installing the project with its ref, export, rtx, serve, calibrate and dev extras (about a minute)"
.venv/bin/python -m pip install -q -e ".[ref,export,rtx,serve,calibrate,dev]"
step "checking that torch, onnx, onnxruntime, polygraphy and tensorrt-rtx import (seconds)"
.venv/bin/python -c "import torch, onnx, onnxruntime, polygraphy, tensorrt_rtx_bindings; print('torch', torch.__version__, '| onnx', onnx.__version__, '| onnxruntime', onnxruntime.__version__, '| tensorrt-rtx', tensorrt_rtx_bindings.__version__)"
echo "install.sh: done in $((SECONDS - start)) s" >&2
