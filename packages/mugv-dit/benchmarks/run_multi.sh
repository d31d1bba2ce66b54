#!/usr/bin/env bash
# Multi-GPU benchmark (H200 x NGPU, default 4): DP weak scaling 1 -> NGPU GPUs at 12.9k tokens
# per GPU, and the full 10b preset at 50.4k tokens with TP=NGPU + sequence parallel and full
# recompute (if it does not fit, half its depth). Run from the repository root.
set -o pipefail
NGPU=${NGPU:-4}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/megatron_core-*.whl .whl/pydantic*.whl \
  .whl/annotated_types-*.whl .whl/typing_inspection-*.whl .whl/typing_extensions-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd packages/mugv-dit/benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
timeout 90 python3 train_step.py --impl mug-fused --case 1728x8@12.9k --iters 8 \
  --label weak-dp1 --json "$OUT/dp1.json" 2>&1 | tee "$OUT/dp1.log"
timeout 120 torchrun --nproc-per-node "$NGPU" train_step.py --impl mug-fused --case 1728x8@12.9k \
  --iters 8 --label "weak-dp$NGPU" --json "$OUT/dp$NGPU.json" 2>&1 | tee "$OUT/dp$NGPU.log"
timeout 200 torchrun --nproc-per-node "$NGPU" train_step.py --impl mug-fused --case 3456x56@50.4k \
  --tp "$NGPU" --sp --recompute full --warmup 1 --iters 2 --label "10b-tp$NGPU-sp" \
  --json "$OUT/10b.json" 2>&1 | tee "$OUT/10b.log"
if grep -q '"error"' "$OUT/10b.json" 2>/dev/null || [ ! -f "$OUT/10b.json" ]; then
  timeout 150 torchrun --nproc-per-node "$NGPU" train_step.py --impl mug-fused --case 3456x28@50.4k \
    --tp "$NGPU" --sp --recompute full --warmup 1 --iters 2 --label "10b-half-depth-tp$NGPU-sp" \
    --json "$OUT/10b_half.json" 2>&1 | tee "$OUT/10b_half.log"
fi
