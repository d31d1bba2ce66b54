#!/usr/bin/env bash
# One GPU session of issue 29 item 2 (modulated LayerNorm fused into the qkv / fc1 GEMMs):
# 1. mugv-kernels GPU test: fused vs unfused bf16 vs float64 at 12.9k tokens, K 1728 and 3456;
# 2. benchmarks/ln_qkv.py: fused vs Triton modLN + cuBLAS vs cuBLAS alone (table + JSON);
# 3. mugv-dit GPU test: the model with runtime.fused_ln_linear vs without (fp32 and bf16),
# 4. mugv-dit benchmarks/fused_ln_linear_step.py: 1728 x 8 layers @ 12.9k fwd+bwd, off vs auto;
#    3-4 only when megatron-core imports or .whl is carried.
# Run from the repository root on the GPU machine; results go to $OUT.
# SKIP_TESTS=1 skips 1 and 3; BENCH_ARGS (e.g. "--cases qkv-1728 fc1-1728") goes to ln_qkv.py.
set -u -o pipefail
OUT=${OUT:-/tmp/ln-linear-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src
export PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout "${TEST_TIMEOUT_S:-90}" python3 -m pytest packages/mugv-kernels/tests/test_ln_linear.py \
    -o addopts="" -m gpu -q -s --tb=short -rfE -p no:cacheprovider 2>&1 \
    | tee "$OUT/ln_linear_gpu_test.log" | grep -v "^$" | tail -n 30
  echo "== kernel test took $(( $(date +%s) - t0 )) s"
fi
t1=$(date +%s)
timeout "${BENCH_TIMEOUT_S:-120}" python3 packages/mugv-kernels/benchmarks/ln_qkv.py --out "$OUT" \
  ${BENCH_ARGS:-} 2>&1 \
  | grep -v '^{' | tee "$OUT/ln_qkv.log" | tail -n 30
echo "== benchmark took $(( $(date +%s) - t1 )) s"
if [ -d .whl ] && ! python3 -c "import megatron.core" 2>/dev/null; then
  [ -d /tmp/site/megatron ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PYTHONPATH:/tmp/site:$PWD/packages/mugv-dit/src
mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' \
  > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
if python3 -c "import megatron.core" 2>/dev/null; then
  t2=$(date +%s)
  if [ -z "${SKIP_TESTS:-}" ]; then
    timeout "${MODEL_TIMEOUT_S:-90}" python3 -m pytest packages/mugv-dit/tests/test_gpu.py \
      -k "fused_ln_linear" -o addopts="" -m gpu -q --tb=short -rfE -p no:cacheprovider 2>&1 \
      | tee "$OUT/dit_gpu_test.log" | grep -v -i "warn" | tail -n 20
    echo "== model test took $(( $(date +%s) - t2 )) s"
  fi
  t3=$(date +%s)
  timeout "${STEP_TIMEOUT_S:-120}" python3 packages/mugv-dit/benchmarks/fused_ln_linear_step.py \
    --out "$OUT" 2>&1 | grep -v -i "warn" | tee "$OUT/fused_ln_linear_step.log" | tail -n 12
  echo "== model step benchmark took $(( $(date +%s) - t3 )) s"
else
  echo "== megatron-core not importable (carry .whl): model test skipped"
fi
echo "== total $(( $(date +%s) - t0 )) s"
