#!/usr/bin/env bash
# Four-GPU benchmark (H200 x4): DP weak scaling 1 -> 4 GPUs, and the full 10b preset at
# 50.4k tokens with TP=4 + sequence parallel and full recompute. Run from the repository root on the GPU machine.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/megatron_core-*.whl .whl/pydantic*.whl \
  .whl/annotated_types-*.whl .whl/typing_inspection-*.whl .whl/typing_extensions-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd packages/mugv-dit/benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/h200x4_gpu.txt"
timeout 90 python3 train_step.py --impl mug-fused --case 1728x8@12.9k --iters 8 \
  --label weak-dp1 --json "$OUT/dp1.json" 2>&1 | tee "$OUT/dp1.log"
timeout 120 torchrun --nproc-per-node 4 train_step.py --impl mug-fused --case 1728x8@12.9k \
  --iters 8 --label weak-dp4 --json "$OUT/dp4.json" 2>&1 | tee "$OUT/dp4.log"
timeout 200 torchrun --nproc-per-node 4 train_step.py --impl mug-fused --case 3456x56@50.4k \
  --tp 4 --sp --recompute full --warmup 1 --iters 2 --label 10b-tp4-sp --json "$OUT/10b_tp4.json" \
  2>&1 | tee "$OUT/10b_tp4.log"
