#!/usr/bin/env bash
# Creates .venv at the project root and installs what the reference and the tests need, on a CPU-only
# machine with Python >= 3.10. torch is pinned to the CPU build first: an unpinned torch would pull
# gigabytes of CUDA wheels. Usage: bash scripts/install.sh   (idempotent; re-run after pulling)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[ref,dev]"
.venv/bin/python -c "import torch, safetensors, soundfile; print('installed torch', torch.__version__)"
