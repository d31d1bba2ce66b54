#!/usr/bin/env bash
# One GPU session of the mugv-kernels norm kernels: GPU tests, then the benchmark table and a
# launch sweep. Run from the repository root on the GPU machine; results go to $OUT.
set -u -o pipefail
export PYTHONPATH=packages/mugv-formats/src:packages/mugv-kernels/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/mugv-kernels-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
t0=$(date +%s)
timeout "${TEST_TIMEOUT_S:-150}" python3 -m pytest packages/mugv-kernels/tests/test_gpu.py \
  -o addopts="" -m gpu -q --tb=line -rf -p no:cacheprovider 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -n 15
echo "tests took $(( $(date +%s) - t0 )) s"
timeout "${BENCH_TIMEOUT_S:-330}" python3 packages/mugv-kernels/benchmarks/bench_kernels.py \
  --out "$OUT" --deadline-s "${DEADLINE_S:-200}" --sweep-until-s "${SWEEP_UNTIL_S:-290}" 2>&1 \
  | grep -v '^{' | tee "$OUT/bench.log" | tail -n 80
