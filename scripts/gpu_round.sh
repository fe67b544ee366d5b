#!/usr/bin/env bash
# One round on the GPU machine: install the carried wheels, run the GPU tests and the whole suite,
# then profile the paper-scale eager reference in fp32 and bf16. Results go to $OUT (or ./gpu-out).
# Prepare here first:   bash ../shared/device/fetch-wheels.sh
# Run there (device tool, carry .whl):   bash scripts/gpu_round.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD" || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
python3 -m pytest -q -rs -m "gpu or trt" 2>&1 | tee "$OUT/gpu-tests.log"
python3 -m pytest -q -x 2>&1 | tail -5 | tee "$OUT/all-tests.log"
for dtype in fp32 bf16; do
  python3 -m benchmarks.reference --preset presto-ls --device cuda --dtype "$dtype" --repeats 5 \
    --json "$OUT/reference-$dtype.json" 2>&1 | grep -v '^{' | tee "$OUT/reference-$dtype.txt"
done
