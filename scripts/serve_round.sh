#!/usr/bin/env bash
# The serving round on a GPU machine: install the carried serving wheels, build the paper-scale bf16
# torch packages at the batch buckets the server packs into, time batch 1 with benchmarks.latency,
# then serve the build with runtime.serve on one GPU and on two and load it with benchmarks.serve
# at each concurrency. Logs and JSON land under $OUT; state that must outlive one 10-minute device
# call (the site folder, the build, its log) under $WORK, so the steps can be spread over calls.
#
# Here, once, to fill .serve-wheels/ (git-ignored; about 51 MB, so it travels in one call): numpy
# 1.26.4 for cp312 (the GPU image has numpy 2, which Triton's backend stub cannot read), tritonclient
# and its HTTP stack, soundfile, Polygraphy, and the server files of the nvidia-pytriton wheel for
# Python 3.12 only (its other stubs and bundled libpython 3.13 dropped, xz-compressed: 27 MB):
#   echo /.serve-wheels/ >> .git/info/exclude; mkdir -p .serve-wheels
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform any -d .serve-wheels numpy==1.26.4 tritonclient==2.73.0 geventhttpclient gevent \
#     greenlet python-rapidjson brotli zope.event zope.interface soundfile cffi pycparser polygraphy colored
#   python3 -m pip download --no-deps -d /tmp/ptw nvidia-pytriton==0.7.0 && cd /tmp/ptw &&
#     unzip -q nvidia_pytriton-*.whl 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*' &&
#     rm nvidia_pytriton.libs/libpython3-*.13.so.1.0 &&
#     rm -r pytriton/tritonserver/python_backend_stubs/{3.8,3.9,3.10,3.11,3.13} &&
#     tar cJf "$OLDPWD"/.serve-wheels/pytriton-0.7.0-py312-server.tar.xz pytriton nvidia_pytriton.libs
# There, from the repository root, carrying .serve-wheels:
#   STEPS="install build wait" bash scripts/serve_round.sh     # 9 minutes, mostly the build
#   STEPS="bench load1" RUNS=30 bash scripts/serve_round.sh    # next call, while the machine is warm
#   STEPS="load2" bash scripts/serve_round.sh
# (The figures in the README ran from a `git archive` of the commit carried as an ignored folder,
# so that helpers' uncommitted edits in the working tree did not travel into the round.)
#
# Everything but steps.txt is packed into $OUT/round.tgz at the end (the device tool returns at
# most 8 files a call; the first two-GPU load run lost its JSON files to that limit).
# STEPS: install  numpy 1.26.4 into python3's own environment (the backend stub reads it from
#                 there), the rest into $WORK/site
#        build    export.build presto-ls, torch, cuda, bf16, --batch-sizes $BATCHES, in the background
#        smoke    a tiny torch build served on $SMOKE_GPUS: one good request, one refused, SIGTERM
#        wait     wait (at most WAIT_S s) for the background build to finish
#        bench    benchmarks.latency, torch backend, batch 1             -> $OUT/latency.json
#        load1    runtime.serve --gpus 0, benchmarks.serve at each of $CONCURRENCY -> $OUT/load1-c*.json
#                 (and the server's --timings-log, $OUT/load1-timings.jsonl)
#        load2    the same on --gpus 0,1                                  -> $OUT/load2-c*.json
#        probe    scripts/phase_probe.py on GPU 0, batch 1, $PROBE_RUNS runs: which phase of a generate
#                 carries the ~20 ms slow runs; then the same uncaptured with --stages (half the
#                 runs): is the tail in the DiT, the VAE or the stereo model, and is it there
#                 without the CUDA graph?                      -> $OUT/probe.json, probe-stages.json
#        dual8    scripts/phase_probe.py at batch 8 ($PROBE8_RUNS runs) on GPU 0 alone, then on GPUs
#                 0 and 1 at once (one process each, timed runs started at one instant); then both
#                 again uncaptured with --stages; nvidia-smi sampled throughout: which phase (and
#                 stage) grows when both GPUs are busy (the server's batch-8 executions went from 390
#                 to 650 ms)   -> $OUT/dual8{,-stages}-{alone,gpu0,gpu1}.json, dual8-smi.csv
#        dual     benchmarks.latency on GPU 0 alone, then on GPUs 0 and 1 at once (one process each,
#                 no server), with nvidia-smi sampled every second: do two busy GPUs of this host
#                 slow each other without Triton?     -> $OUT/dual-{alone,gpu0,gpu1}.json, dual-smi.csv
#        split2   one runtime.serve per GPU (GPU 0 on ports 8000-8002, GPU 1 on 8010-8012) and, per
#                 concurrency C >= 2 of $CONCURRENCY, two benchmarks.serve at C/2 at once, one per
#                 server: is the one Triton process of load2 the two-GPU limit?
#                                             -> $OUT/split2-c*-{a,b}.json, split2-c*.json (summed)
# Settings: OUT (default gpu-out), WORK (default /tmp/serve-round), BATCHES (default 1,8),
# CONCURRENCY (default "1 8 32"), LOAD_S (seconds of load per concurrency, default 60),
# PROTOCOL (http or grpc, default http), SHM_MIB (benchmarks.serve --shared-memory-mib, default 11:
# 32 s of stereo float32 in a shared-memory region per client; 0 puts the audio in the response
# body), RUNS (bench, default 20), WAIT_S (default 540), SERVE_FLAGS (appended to every
# runtime.serve of load1, load2 and split2, e.g. --no-gc-freeze to compare against the default),
# PROBE_RUNS (probe, default 300), PROBE8_RUNS (dual8, default 30), BUILD_FLAGS (appended to the
# build's export.build, e.g. --no-verify). Every load step also samples nvidia-smi (clocks, power,
# temperature, throttle reasons) every second into $OUT/NAME-smi.csv.
set -uo pipefail
# shellcheck disable=SC2086  # SERVE_FLAGS is split into arguments on purpose
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/serve-round}
STEPS=${STEPS:-install build wait bench load1 load2}
BATCHES=${BATCHES:-1,8}
CONCURRENCY=${CONCURRENCY:-1 8 32}
LOAD_S=${LOAD_S:-60}
PROTOCOL=${PROTOCOL:-http}
SHM_MIB=${SHM_MIB:-11}
RUNS=${RUNS:-20}
WAIT_S=${WAIT_S:-540}
PROBE_RUNS=${PROBE_RUNS:-300}
PROBE8_RUNS=${PROBE8_RUNS:-30}
ENGINES=$WORK/presto-ls-bf16
SITE=$WORK/site
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++; fi  # see scripts/gpu_round.sh
port=$([ "$PROTOCOL" = grpc ] && echo 8001 || echo 8000)

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile .serve-wheels/numpy-1.26.4-*.whl &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
      $(ls .serve-wheels/*.whl | grep -v numpy-) &&
    tar xJf .serve-wheels/pytriton-*-server.tar.xz -C "$SITE" &&
    python3 -c "import numpy, torch, tritonclient.http, soundfile; print('numpy', numpy.__version__, '| torch', torch.__version__, '| GPUs', torch.cuda.device_count())"
}
build() {
  setsid nohup python3 -m export.build --preset presto-ls --backends torch --device cuda \
    --precision bf16 --batch-sizes "$BATCHES" --out "$ENGINES" ${BUILD_FLAGS:-} > "$WORK/build.log" 2>&1 &
  echo $! > "$WORK/build.pid"
  echo "build started in the background (pid $(cat "$WORK/build.pid")), log $WORK/build.log"
}
wait_build() {
  local pid deadline=$((SECONDS + WAIT_S))
  pid=$(cat "$WORK/build.pid")
  while kill -0 "$pid" 2> /dev/null; do
    if [ $SECONDS -gt $deadline ]; then echo "build still running after $WAIT_S s"; return 1; fi
    sleep 5
  done
  tail -n 5 "$WORK/build.log"
  grep -q "OK" "$WORK/build.log" && [ -f "$ENGINES/manifest.json" ]
}
smoke() {
  local tiny=$WORK/tiny pid status=0
  python3 -m export.build --preset tiny --backends torch --device cuda --batch-sizes 1,2 \
    --durations-s 1 --no-verify --out "$tiny" -q || return 1
  python3 -m runtime.serve --engines "$tiny" --gpus "${SMOKE_GPUS:-0}" > "$OUT/smoke-server.log" 2>&1 &
  pid=$!
  python3 -c "from runtime import Client; Client('localhost:8000').wait_ready(300)" || status=1
  python3 -m runtime.client "warm lofi piano" --url localhost:8000 -o "$WORK/smoke.wav" || status=1
  python3 -m runtime.client "warm lofi piano" --url localhost:8001 --protocol grpc --bpm 999 \
    -o "$WORK/refused.wav" && status=1
  kill -TERM $pid
  wait $pid || status=1
  grep -a -E "ready in|warmed up|rror" "$OUT/smoke-server.log" | grep -v -E "NVML|DCGM" | tail -n 8
  return $status
}
smi_log() {  # smi_log FILE: sample every GPU once a second until killed; prints the sampler's pid
  nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,clocks_throttle_reasons.active \
    --format=csv -l 1 > "$1" 2>&1 &
  echo $!
}
probe() {
  CUDA_VISIBLE_DEVICES=0 python3 scripts/phase_probe.py --engines "$ENGINES" --device cuda \
    --runs "$PROBE_RUNS" --json "$OUT/probe.json" &&
    CUDA_VISIBLE_DEVICES=0 python3 scripts/phase_probe.py --engines "$ENGINES" --device cuda \
      --stages --runs $((PROBE_RUNS / 2)) --json "$OUT/probe-stages.json"
}
probe8_on() {  # probe8_on GPU NAME [START_AT [FLAGS]]: phase_probe at batch 8 -> $OUT/NAME.{json,log}
  CUDA_VISIBLE_DEVICES=$1 python3 scripts/phase_probe.py --engines "$ENGINES" --device cuda \
    --batch 8 --runs "$PROBE8_RUNS" ${3:+--start-at "$3"} ${4:-} --json "$OUT/$2.json" > "$OUT/$2.log" 2>&1
}
dual8() {  # phase_probe at batch 8 alone on GPU 0, then on GPUs 0 and 1 from one instant; then the
  # same uncaptured with --stages
  local smi status=0 a at flags name
  smi=$(smi_log "$OUT/dual8-smi.csv")
  for flags in "" --stages; do
    name=dual8${flags:+-stages}
    probe8_on 0 "$name-alone" "" "$flags" || status=1
    at=$(($(date +%s) + 60))  # both processes have loaded the build and warmed up by then
    probe8_on 0 "$name-gpu0" "$at" "$flags" &
    a=$!
    probe8_on 1 "$name-gpu1" "$at" "$flags" || status=1
    wait $a || status=1
    cat "$OUT/$name"-{alone,gpu0,gpu1}.log
  done
  kill "$smi"
  return $status
}
bench() {
  python3 -m benchmarks.latency --engines "$ENGINES" --device cuda --no-max-batch \
    --backends torch --runs "$RUNS" --json "$OUT/latency.json"
}
load() {  # load NAME GPUS: serve on GPUS, then one load test per concurrency
  local name=$1 gpus=$2 pid status=0 smi
  smi=$(smi_log "$OUT/$name-smi.csv")
  python3 -m runtime.serve --engines "$ENGINES" ${SERVE_FLAGS:-} --gpus "$gpus" --timings-log "$OUT/$name-timings.jsonl" \
    > "$OUT/$name-server.log" 2>&1 &
  pid=$!
  python3 -c "from runtime import Client; Client('localhost:8000').wait_ready(600)" || {
    kill -TERM $pid; wait $pid; kill "$smi"; return 1
  }
  grep -a "ready in" "$OUT/$name-server.log"
  for c in $CONCURRENCY; do
    python3 -m benchmarks.serve --url "localhost:$port" --protocol "$PROTOCOL" --concurrency "$c" \
      --duration-s "$LOAD_S" --shared-memory-mib "$SHM_MIB" --metrics-url localhost:8002 \
      --json "$OUT/$name-c$c.json" || status=1
  done
  kill -TERM $pid
  wait $pid || status=1
  kill "$smi"
  tail -n 3 "$OUT/$name-server.log"
  return $status
}

split() {  # split NAME: one server per GPU, the load divided between them
  local name=$1 pa pb status=0 half smi
  smi=$(smi_log "$OUT/$name-smi.csv")
  python3 -m runtime.serve --engines "$ENGINES" ${SERVE_FLAGS:-} --gpus 0 --timings-log "$OUT/$name-a-timings.jsonl" \
    > "$OUT/$name-a-server.log" 2>&1 &
  pa=$!
  python3 -m runtime.serve --engines "$ENGINES" ${SERVE_FLAGS:-} --gpus 1 --http-port 8010 --grpc-port 8011 \
    --metrics-port 8012 --timings-log "$OUT/$name-b-timings.jsonl" > "$OUT/$name-b-server.log" 2>&1 &
  pb=$!
  python3 -c "from runtime import Client; [Client(u).wait_ready(600) for u in ('localhost:8000', 'localhost:8010')]" || {
    kill -TERM $pa $pb; wait $pa $pb; kill "$smi"; return 1
  }
  for c in $CONCURRENCY; do
    [ "$c" -ge 2 ] || continue
    half=$((c / 2))
    python3 -m benchmarks.serve --url "localhost:$port" --protocol "$PROTOCOL" --concurrency "$half" \
      --duration-s "$LOAD_S" --shared-memory-mib "$SHM_MIB" --metrics-url localhost:8002 \
      --json "$OUT/$name-c$c-a.json" > "$OUT/$name-c$c-a.log" 2>&1 &
    local ba=$!
    python3 -m benchmarks.serve --url "localhost:$((port + 10))" --protocol "$PROTOCOL" \
      --concurrency "$half" --duration-s "$LOAD_S" --shared-memory-mib "$SHM_MIB" \
      --metrics-url localhost:8012 --json "$OUT/$name-c$c-b.json" > "$OUT/$name-c$c-b.log" 2>&1
    wait $ba || status=1
    python3 - "$OUT/$name-c$c" <<'SUM' || status=1
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}-{k}.json")) for k in "ab")
lat = sorted(t[1] for d in (a, b) for t in d["timeline"] if t[2])
rank = lambda q: lat[max(0, -(-len(lat) * q // 100) - 1)]
doc = {"concurrency": a["concurrency"] + b["concurrency"], "requests": a["requests"] + b["requests"],
       "errors": a["errors"] + b["errors"],
       "throughput_audio_s_per_s": a["throughput_audio_s_per_s"] + b["throughput_audio_s_per_s"],
       "latency_ms": {"p50": rank(50), "p90": rank(90), "p99": rank(99)}}
json.dump(doc, open(f"{sys.argv[1]}.json", "w"), indent=1)
print(json.dumps(doc))
SUM
  done
  kill -TERM $pa $pb
  wait $pa || status=1
  wait $pb || status=1
  kill "$smi"
  return $status
}

declare -A STATUS=()
for step in $STEPS; do
  start=$SECONDS
  echo "=== $step"
  case $step in
    install) install ;;
    build) build ;;
    smoke) smoke ;;
    wait) wait_build ;;
    bench) bench 2>&1 | tee "$OUT/bench.log" | tail -n 30 ;;
    load1) load load1 0 ;;
    load2) load load2 0,1 ;;
    split2) split split2 ;;
    probe) probe ;;
    dual) dual ;;
    dual8) dual8 ;;
    *) echo "unknown step $step"; false ;;
  esac
  STATUS[$step]=$?
  echo "=== $step: exit ${STATUS[$step]} after $((SECONDS - start)) s"
done
cp "$WORK/build.log" "$OUT/" 2> /dev/null
for step in $STEPS; do echo "$step: exit ${STATUS[$step]}"; done | tee "$OUT/steps.txt"
# The device tool brings back at most 8 files a call (a load step alone writes 4): pack the rest.
(cd "$OUT" && find . -maxdepth 1 -type f ! -name steps.txt ! -name round.tgz -printf '%f\n' |
  tar czf round.tgz -T - --remove-files)
if grep -q -v ": exit 0$" "$OUT/steps.txt"; then exit 1; fi
