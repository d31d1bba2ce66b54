#!/usr/bin/env bash
# Pipeline and context parallelism on NGPU GPUs (default 2) next to data parallelism: the real
# trainer (latent shards, Megatron schedules, distributed optimizer) at 12,880 tokens per
# sample (~360p 5 s), hidden 1728 x 8 layers, fused ops, 4 samples per step.
# Run from the repository root; results in $OUT.
set -o pipefail
NGPU=${NGPU:-2}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/megatron_core-*.whl .whl/pydantic*.whl \
  .whl/annotated_types-*.whl .whl/typing_inspection-*.whl .whl/typing_extensions-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WORK=/tmp/dit-layouts
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
python3 packages/mugv-dit/benchmarks/parallel_layouts.py make-data "$WORK" || exit 1
timeout 240 torchrun --nproc-per-node "$NGPU" packages/mugv-dit/benchmarks/parallel_layouts.py \
  run "$WORK" --layouts dp pp cp --fused --warmup 3 --steps 5 \
  --json "$OUT/layouts.json" 2>&1 | tee "$OUT/layouts.log"
