#!/usr/bin/env bash
# One GPU round for the PyTorch backend: compile the paper-scale preset's AOTInductor packages for
# CUDA, then check each against the eager fp32 reference in a process without presto_ref.
# Usage there (device tool, carry .whl): PRECISION=bf16 bash scripts/gpu_export_round.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
PRECISION=${PRECISION:-bf16}
PRESET=${PRESET:-presto-ls}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export PYTHONUNBUFFERED=1
# The GPU image sets CXX=/opt/gcc/bin/g++; AOTInductor libraries built with it crash in std::regex
# at load time (seen with cuda-gdb), so build with the system compiler.
export CXX=/usr/bin/g++
B=/tmp/build-$PRESET-$PRECISION
if [ "${GPU_TESTS:-0}" = 1 ]; then
  python3 -m pytest -q -rs -m gpu tests/runtime tests/export 2>&1 | tail -15 | tee "$OUT/gpu-tests-export.log"
fi
python3 -m export.build --preset "$PRESET" --backends torch --device cuda --precision "$PRECISION" \
  --no-verify --out "$B" 2>&1 | grep -v -E "torchvision|LeafSpec|return cls" | tail -30 | tee "$OUT/build-$PRECISION.log"
python3 scripts/torch_parity.py reference --build "$B" --out "/tmp/ref-$PRECISION.pt" 2>&1 | tail -12
python3 scripts/torch_parity.py check --build "$B" --reference "/tmp/ref-$PRECISION.pt" \
  --json "$OUT/parity-$PRECISION.json" 2>&1 | tee "$OUT/parity-$PRECISION.txt"
du -sh "$B"/* | tee "$OUT/sizes-$PRECISION.txt"
if [ "${RUNTIME_REPORT:-1}" = 1 ]; then
  python3 scripts/runtime_gpu_report.py --engines "$B" --json "$OUT/runtime-$PRECISION.json" 2>&1 \
    | grep -v -E "torchvision|LeafSpec|return cls" | tail -30 | tee "$OUT/runtime-$PRECISION.txt"
fi
