#!/usr/bin/env bash
# One device call: the bf16 torch packages at batch 1 and at batch $BIG, then benchmarks.latency at
# batch 1 and at the largest built batch that runs (with peak memory and kernel launches).
# Usage there (device tool, carry .whl): BIG=16 bash scripts/gpu_max_batch_round.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
BIG=${BIG:-16}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export PYTHONUNBUFFERED=1 CXX=/usr/bin/g++
quiet() { grep -v -E "torchvision|LeafSpec|return cls|UserWarning|warnings.warn|_warn_once"; }
python3 -m export.build --preset presto-ls --backends torch --device cuda --precision bf16 \
  --batch-sizes "1,$BIG" --no-verify --out /tmp/big 2>&1 | quiet | grep -E "built in|OK in|rror" \
  | tee "$OUT/build-big.log"
python3 -m benchmarks.latency --engines /tmp/big --backends torch --max-batch ${LATENCY_FLAGS:-} \
  --json "$OUT/latency-max-batch.json" 2>"$OUT/latency-max-batch.log" | quiet | head -40
tail -4 "$OUT/latency-max-batch.log"
