#!/usr/bin/env bash
# One device call: fp32 AOTInductor packages of the paper-scale preset (build, per-component parity,
# graph/threads determinism, runtime report), with the kernel micro-benchmarks running beside the
# build (they use the GPU while the build mostly uses the CPU).
# Usage there (device tool, carry .whl): bash scripts/gpu_fp32_round.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export PYTHONUNBUFFERED=1 CXX=/usr/bin/g++
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 scripts/gpu_microbench.py --json "$OUT/micro.json" > "$OUT/micro.txt" 2>&1 &
MICRO=$!
PRECISION=fp32 RUNTIME_REPORT=0 bash scripts/gpu_export_round.sh
wait $MICRO; cat "$OUT/micro.txt" | grep -v -E "torchvision|LeafSpec|return cls"
B=/tmp/build-presto-ls-fp32
python3 scripts/gpu_determinism.py --engines "$B" --json "$OUT/determinism-fp32.json" 2>&1 | tail -5
python3 scripts/runtime_gpu_report.py --engines "$B" --json "$OUT/runtime-fp32.json" 2>&1 \
  | grep -v -E "torchvision|LeafSpec|return cls" | tail -20 | tee "$OUT/runtime-fp32.txt"
