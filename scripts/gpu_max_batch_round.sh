#!/usr/bin/env bash
# The max-batch table on the device tool's GPU, in calls that each fit its 600 s limit. Builds stay
# on the machine between calls (ignored paths are kept while it is warm), so run the phases back to
# back. Carry .whl in every call.
#
#   PHASE=build bash scripts/gpu_max_batch_round.sh
#       the bf16 torch packages, one process per batch bucket of $BUCKETS in parallel, each into
#       artifacts/h100-b<N>, then assembled into artifacts/h100-max with --reuse-from (hard links).
#       Parallel builds share the GPU: Inductor's compile-time Triton autotuning then times under
#       contention (the batch-1 DiT came out 20% slower), and large VAE buckets can run out of
#       memory while compiling. For timings you will quote, build one process: BUCKETS=1,32 ASSEMBLE=
#       ENGINES=artifacts/h100-b1,32
#   PHASE=bench BACKENDS=torch,torch-nograph,eager-bf16,eager-fp32 bash scripts/gpu_max_batch_round.sh
#       benchmarks.latency on artifacts/h100-max at batch 1 and at the largest batch that fits;
#       $OUT/latency-<tag>.json is rewritten after every row, so a run cut short keeps its rows
set -uo pipefail
OUT=${OUT:-gpu-out}
PHASE=${PHASE:?set PHASE=build or PHASE=bench}
BUCKETS=${BUCKETS:-1 32 64}
ASSEMBLE=${ASSEMBLE-$BUCKETS}  # buckets assembled into artifacts/h100-max (ASSEMBLE= skips it)
ENGINES=${ENGINES:-artifacts/h100-max}  # what the bench phase times
BACKENDS=${BACKENDS:-torch,torch-nograph,eager-bf16,eager-fp32}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-520}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-560}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export PYTHONUNBUFFERED=1 CXX=/usr/bin/g++
quiet() { grep -v -E "torchvision|LeafSpec|return cls|UserWarning|warnings.warn|_warn_once"; }
BUILD=(python3 -m export.build --preset presto-ls --backends torch --device cuda --precision bf16
       --no-verify)

if [ "$PHASE" = build ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  start=$(date +%s)
  for b in $BUCKETS; do
    ( timeout "$BUILD_TIMEOUT" "${BUILD[@]}" --batch-sizes "$b" --out "artifacts/h100-b$b" 2>&1 \
        | quiet | grep -E "built in|OK in|rror|FAILED" > "$OUT/build-b$b.log"
      echo "batch $b: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" >> "$OUT/build-b$b.log"
    ) &
  done
  wait
  tail -n 2 "$OUT"/build-b*.log
  if [ -n "$ASSEMBLE" ]; then
    reuse=()
    for b in $ASSEMBLE; do reuse+=(--reuse-from "artifacts/h100-b$b"); done
    "${BUILD[@]}" --batch-sizes "$(echo $ASSEMBLE | tr ' ' ,)" --out artifacts/h100-max \
      "${reuse[@]}" 2>&1 | quiet | tail -n 25 | tee "$OUT/assemble.log"
  fi
  echo "build phase: $(( $(date +%s) - start )) s"
  df -h . | tail -1
elif [ "$PHASE" = bench ]; then
  tag=$(echo "$BACKENDS" | tr , -)
  timeout "$BENCH_TIMEOUT" python3 -m benchmarks.latency --engines "$ENGINES" \
    --backends "$BACKENDS" --device cuda --max-batch --runs ${RUNS:-10} \
    --max-batch-runs ${MAX_BATCH_RUNS:-5} --json "$OUT/latency-$tag.json" \
    2>"$OUT/latency-$tag.log" | quiet | head -n -1
  echo "benchmarks.latency exit ${PIPESTATUS[0]}"
  grep -E "max-batch trial|largest batch|out of memory|FAILED|OK in|rror" "$OUT/latency-$tag.log" | tail -n 30
else
  echo "PHASE=$PHASE: expected build or bench" >&2
  exit 2
fi
