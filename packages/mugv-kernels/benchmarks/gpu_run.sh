#!/usr/bin/env bash
# One GPU session of mugv-kernels: GPU tests, then the benchmark table and a launch sweep.
# Run from the repository root on the GPU machine; results go to $OUT.
set -u
export PYTHONPATH=packages/mugv-formats/src:packages/mugv-kernels/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/mugv-kernels-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
t0=$(date +%s)
if python3 -c "import pytest" 2>/dev/null; then
  timeout "${TEST_TIMEOUT_S:-120}" python3 -m pytest packages/mugv-kernels/tests/test_gpu.py -m gpu \
    -q --tb=line -rf -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 30
else
  timeout "${TEST_TIMEOUT_S:-120}" python3 -m mugv_kernels.cli check --size medium 2>&1 \
    | tee "$OUT/gpu_tests.log" | tail -n 40
fi
echo "tests took $(( $(date +%s) - t0 )) s"
python3 packages/mugv-kernels/benchmarks/bench_kernels.py --out "$OUT" \
  --deadline-s "${DEADLINE_S:-220}" --sweep-until-s "${SWEEP_UNTIL_S:-260}" 2>&1 \
  | grep -v '^{' | tee "$OUT/bench.log"
# Stretch: head-dim-72 attention vs SDPA backends (own process: a crash cannot cost the above).
timeout "${ATTN_TIMEOUT_S:-100}" python3 packages/mugv-kernels/benchmarks/bench_attention.py \
  --out "$OUT" 2>&1 | grep -v '^{' | tee "$OUT/attention.log"
