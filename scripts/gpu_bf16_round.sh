#!/usr/bin/env bash
# One device call for the bf16 torch packages of the paper-scale preset: build, per-component parity,
# determinism (graph / uncaptured / threads), the runtime report (latency with and without the
# graph, SNR against fp32), the per-stage profile, and benchmarks.latency with the compiled and eager
# backends side by side. Every step writes under $OUT as it finishes.
# Usage there (device tool, carry .whl): bash scripts/gpu_bf16_round.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
PRECISION=${PRECISION:-bf16}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export PYTHONUNBUFFERED=1 CXX=/usr/bin/g++
B=/tmp/build-presto-ls-$PRECISION
quiet() { grep -v -E "torchvision|LeafSpec|return cls|UserWarning|warnings.warn|_warn_once"; }
PRECISION=$PRECISION RUNTIME_REPORT=0 bash scripts/gpu_export_round.sh
python3 scripts/gpu_determinism.py --engines "$B" --json "$OUT/determinism-$PRECISION.json" 2>&1 | quiet | tail -4
python3 scripts/runtime_gpu_report.py --engines "$B" --json "$OUT/runtime-$PRECISION.json" 2>&1 \
  | quiet | tail -20 | tee "$OUT/runtime-$PRECISION.txt"
if [ "${PROFILE:-1}" = 1 ]; then
  python3 -m benchmarks.profile --engines "$B" --json "$OUT/profile-$PRECISION.json" --top 6 2>&1 \
    | quiet | tee "$OUT/profile-$PRECISION.txt" | grep -v "^    "
fi
if [ -n "${LATENCY_BACKENDS:-}" ]; then
  python3 -m benchmarks.latency --engines "$B" --backends "$LATENCY_BACKENDS" ${LATENCY_FLAGS:-} \
    --json "$OUT/latency-$PRECISION.json" 2>"$OUT/latency-$PRECISION.log" | quiet | head -80
  tail -5 "$OUT/latency-$PRECISION.log"
fi
