#!/usr/bin/env bash
# One round on the GPU machine: install the carried wheels, record the GPU and versions, run the
# device test suite, build the paper-scale bf16 torch packages at batch 1, and time them against the
# committed H100 baseline. Everything lands under $OUT; the console gets the end of each step's log.
#
# Here, once, to fill .whl/ (soundfile, polygraphy, ... that the GPU image lacks):
#   bash ../shared/device/fetch-wheels.sh
# There, from the repository root, carrying .whl:
#   bash scripts/gpu_round.sh                          # every default step (more than 10 minutes)
#   STEPS=tests bash scripts/gpu_round.sh              # one step per 10-minute device call ...
#   STEPS="build bench" bash scripts/gpu_round.sh      # ... while the machine keeps $ENGINES
#   STEPS="build quant qreport qlatency qbatch" bash scripts/gpu_round.sh   # issue 12, in the background
#   PRESET=tiny DEVICE=cpu QUANTS=int8 STEPS="build quant qreport qlatency" SITE=DIR bash ...  # CPU trial
#
# STEPS (default "tests build bench"; the environment is recorded every time):
#   tests    python3 -m pytest -q -rs -m "gpu or trt"           -> $OUT/tests.log, tests.xml
#   build    python3 -m export.build --preset $PRESET ... bf16, buckets $BATCHES, into $ENGINES; with
#            BUILD_GPUS=N (N > 1) each bucket of BATCHES is built on its own GPU (0..N-1, in turn)
#            into $ENGINES-bB, then joined into $ENGINES with --reuse-from (nothing recompiled):
#            on two H200s buckets 1 and 64 took 412 s where one GPU takes about 735 s
#   bench    python3 -m benchmarks.latency on $ENGINES, batch 1, each of $BACKENDS,
#            --compare $BASELINE (exit 1 on a regression)         -> $OUT/latency.json, latency.log
#   maxbench python3 -m benchmarks.latency on $ENGINES at batch 1 and the largest built batch that
#            fits, each of $BACKENDS (eager searched up to MAX_BATCH_LIMIT)
#                                                                   -> $OUT/latency-max.json
#   profile  python3 -m benchmarks.profile on $ENGINES at each of $PROFILE_BATCHES
#                                                                   -> $OUT/profile-bB.json
#   fidelity python3 -m calibration.report of $ENGINES (torch) against the fp32 reference: x0 per
#            DiT step and budget, end-to-end SNR of the stereo audio  -> $OUT/fidelity.json
#   micro    python3 -m benchmarks.microbench (kernel-level)        -> $OUT/microbench.json
#   reference  python3 -m benchmarks.reference, the eager model in fp32 and bf16
#                                                                   -> $OUT/reference-{fp32,bf16}.json
#   quant    calibration.calibrate for each of QUANTS (the shipped prompts, one seed; kept in
#            $ENGINES-calib-Q and reused), then export.build --quantization Q into $ENGINES-Q, one
#            after the other, reusing $ENGINES' unquantized components (run `build` first)
#                                                                   -> $OUT/quant.log
#   qreport  calibration.report of each of QUANTS' builds against $ENGINES (torch)
#                                                                   -> $OUT/report-Q.json
#   qlatency benchmarks.latency of $ENGINES with --also-engines for every $ENGINES-fp8/-int8 that
#            exists, batch 1                                        -> $OUT/latency-quant.json
#   qbatch   scripts/quant_round.py's speed stage: the budget-0 DiT package, bf16 and each of
#            QUANTS, at QBATCHES                                    -> $OUT/qbatch/quant-round.json
# Other settings: BUILD_GPUS (default 1; see build), OUT (default gpu-out), SITE (where the wheels
# are installed; default a new temporary folder; a SITE that already holds them is reused), PRESET
# (default presto-ls), DEVICE (default cuda), ENGINES (default artifacts/$PRESET-$DEVICE-bf16),
# BATCHES (build's buckets, default 1; e.g. 1,64 for maxbench), BACKENDS (bench's and maxbench's,
# default every one that runs on a CUDA GPU: torch,torch-nograph,eager-bf16,eager-fp32),
# PROFILE_BATCHES (default 1), MAX_BATCH_LIMIT (default 64), QUANTS (default "fp8 int8"),
# QBATCHES (default 64,128), BASELINE (default benchmarks/baselines/h100-presto-ls-bf16.json),
# RUNS (timed runs of bench, qlatency and qbatch, default 20), PYTEST_ARGS (appended to the tests
# step's pytest, e.g. "tests/gpu" to run that folder alone), PRESTO_GPU_BUILDS (where tests/gpu
# builds; see its conftest.py). Exits 1 if any step failed, after running them all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
STEPS=${STEPS:-tests build bench}
PRESET=${PRESET:-presto-ls}
DEVICE=${DEVICE:-cuda}
QUANTS=${QUANTS:-fp8 int8}
ENGINES=${ENGINES:-artifacts/$PRESET-$DEVICE-bf16}
BASELINE=${BASELINE:-benchmarks/baselines/h100-presto-ls-bf16.json}
RUNS=${RUNS:-20}
QBATCHES=${QBATCHES:-64,128}
BATCHES=${BATCHES:-1}
PROFILE_BATCHES=${PROFILE_BATCHES:-1}
MAX_BATCH_LIMIT=${MAX_BATCH_LIMIT:-64}
BACKENDS=${BACKENDS:-torch,torch-nograph,eager-bf16,eager-fp32}
for step in $STEPS; do
  case $step in
    tests | build | bench | maxbench | profile | fidelity | micro | reference | quant | qreport | qlatency | qbatch) ;;
    *)
      echo "unknown step '$step' in STEPS; choose from tests build bench maxbench profile fidelity micro reference quant qreport qlatency qbatch" >&2
      exit 2 ;;
  esac
done
mkdir -p "$OUT"

# --- environment -----------------------------------------------------------------------------------
SITE=${SITE:-$(mktemp -d)}
if [ ! -e "$SITE/.presto-wheels" ]; then
  compgen -G ".whl/*.whl" > /dev/null || {
    echo "no wheels in .whl/: run bash ../shared/device/fetch-wheels.sh here and carry .whl" >&2
    exit 2
  }
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
  touch "$SITE/.presto-wheels"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The GPU image sets CXX=/opt/gcc/bin/g++, and AOTInductor packages whose wrapper library it builds
# segfault at load (in std::regex, while the model parses its device string; seen with cuda-gdb).
# Build with the system compiler instead (export/torch_backend.py says the same).
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++; fi

{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  if commit=$(git rev-parse HEAD 2>/dev/null); then
    echo "git $commit$(git diff --quiet HEAD || echo ' (tracked files differ)')"
  else
    echo "git: no repository here"
  fi
  echo "steps $STEPS"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" 2>&1
  echo "CXX ${CXX:-unset} | SITE $SITE"
} | tee "$OUT/env.txt"

# --- steps -----------------------------------------------------------------------------------------
declare -A STATUS=()
run_step() {  # run_step NAME CMD...: full output to $OUT/NAME.log, its end to the console
  local name=$1 start=$SECONDS
  shift
  echo "=== $name: $*" | tee "$OUT/$name.log"
  "$@" >> "$OUT/$name.log" 2>&1
  STATUS[$name]=$?
  grep -v -E "^=== |Warning|warnings.warn|return cls|^\s*$" "$OUT/$name.log" | tail -n "${TAIL:-25}"
  echo "=== $name: exit ${STATUS[$name]} after $((SECONDS - start)) s"
}
eager_reference() {
  for dtype in fp32 bf16; do
    python3 -m benchmarks.reference --preset presto-ls --device cuda --dtype "$dtype" --repeats 5 \
      --json "$OUT/reference-$dtype.json" || return 1
  done
}
profiles() {  # one benchmarks.profile per batch of PROFILE_BATCHES
  local b status=0
  for b in ${PROFILE_BATCHES//,/ }; do
    python3 -m benchmarks.profile --engines "$ENGINES" --batch "$b" --json "$OUT/profile-b$b.json" ||
      status=1
  done
  return $status
}
parallel_build() {  # one bucket per GPU, then the join; BUILD_GPUS GPUs in turn
  local b i=0 pids=() status=0
  for b in ${BATCHES//,/ }; do
    CUDA_VISIBLE_DEVICES=$((i % BUILD_GPUS)) python3 -m export.build --preset "$PRESET" \
      --backends torch --device "$DEVICE" --precision bf16 --batch-sizes "$b" \
      --out "$ENGINES-b$b" > "$OUT/build-b$b.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  [ $status = 0 ] || { echo "a bucket's build failed: see $OUT/build-b*.log" >&2; return 1; }
  local reuse=()
  for b in ${BATCHES//,/ }; do reuse+=(--reuse-from "$ENGINES-b$b"); done
  python3 -m export.build --preset "$PRESET" --backends torch --device "$DEVICE" --precision bf16 \
    --batch-sizes "$BATCHES" "${reuse[@]}" --out "$ENGINES"
}
calibrations() {  # one per precision of QUANTS, kept beside $ENGINES (a second round reuses them)
  for q in $QUANTS; do
    [ -e "$ENGINES-calib-$q/calibration.json" ] && continue
    python3 -m calibration.calibrate --preset "$PRESET" --precision "$q" --device "$DEVICE" \
      --seeds 1 -o "$ENGINES-calib-$q" || return 1
  done
}
quantized_builds() {  # one after the other: builds sharing a GPU autotune under contention (README)
  calibrations || return 1
  for q in $QUANTS; do
    python3 -m export.build --preset "$PRESET" --backends torch --device "$DEVICE" --precision bf16 \
      --batch-sizes 1 --quantization "$q" --calibration "$ENGINES-calib-$q" \
      --reuse-from "$ENGINES" --out "$ENGINES-$q" || return 1
  done
}
quantized_report() {
  for q in $QUANTS; do
    python3 -m calibration.report --engines "$ENGINES-$q" --against "$ENGINES" --backend torch \
      --device "$DEVICE" --json "$OUT/report-$q.json" || return 1
  done
}
quantized_latency() {  # $ENGINES beside every quantized build of it that exists
  local also=() q
  for q in fp8 int8; do [ -e "$ENGINES-$q/manifest.json" ] && also+=(--also-engines "$ENGINES-$q"); done
  python3 -m benchmarks.latency --engines "$ENGINES" "${also[@]}" --device "$DEVICE" \
    --no-max-batch --backends torch --runs "$RUNS" --json "$OUT/latency-quant.json"
}
quantized_batch() {  # the budget-0 DiT package alone at the large batches, bf16 beside each of QUANTS
  local q
  mkdir -p "$ENGINES-qwork"
  for q in $QUANTS; do  # quant_round takes a calibration it finds in --work: the quant step's
    if [ -e "$ENGINES-calib-$q/calibration.json" ]; then
      ln -sfn "$(realpath "$ENGINES-calib-$q")" "$ENGINES-qwork/calib-$q"
    fi
  done
  python3 scripts/quant_round.py --preset "$PRESET" --budget 0 --stages speed --device "$DEVICE" \
    --precisions "bf16,${QUANTS// /,}" --batches "$QBATCHES" --runs "$RUNS" --out "$OUT/qbatch" \
    --work "$ENGINES-qwork"
}

for step in $STEPS; do
  case $step in
    tests)
      # shellcheck disable=SC2086  # PYTEST_ARGS is split into arguments on purpose
      run_step tests python3 -m pytest -q -rs -m "gpu or trt" -p no:cacheprovider \
        --junitxml "$OUT/tests.xml" ${PYTEST_ARGS:-} ;;
    build)
      if [ "${BUILD_GPUS:-1}" -gt 1 ] && [[ $BATCHES == *,* ]]; then
        run_step build parallel_build
      else
        run_step build python3 -m export.build --preset "$PRESET" --backends torch \
          --device "$DEVICE" --precision bf16 --batch-sizes "$BATCHES" --out "$ENGINES"
      fi ;;
    bench)
      run_step bench python3 -m benchmarks.latency --engines "$ENGINES" --device cuda \
        --no-max-batch --backends "$BACKENDS" --runs "$RUNS" \
        --json "$OUT/latency.json" --compare "$BASELINE" ;;
    maxbench)
      run_step maxbench python3 -m benchmarks.latency --engines "$ENGINES" --device cuda \
        --max-batch --max-batch-limit "$MAX_BATCH_LIMIT" --max-batch-runs 5 \
        --backends "$BACKENDS" --runs "$RUNS" --json "$OUT/latency-max.json" ;;
    profile)
      run_step profile profiles ;;
    fidelity)
      run_step fidelity python3 -m calibration.report --engines "$ENGINES" --backend torch \
        --device "$DEVICE" --json "$OUT/fidelity.json" ;;
    micro)
      run_step micro python3 -m benchmarks.microbench --json "$OUT/microbench.json" ;;
    reference)
      run_step reference eager_reference ;;
    quant)
      run_step quant quantized_builds ;;
    qreport)
      run_step qreport quantized_report ;;
    qlatency)
      run_step qlatency quantized_latency ;;
    qbatch)
      run_step qbatch quantized_batch ;;
  esac
done

for step in $STEPS; do echo "$step: exit ${STATUS[$step]}"; done | tee "$OUT/steps.txt"
if grep -q -v ": exit 0$" "$OUT/steps.txt"; then exit 1; fi
