#!/usr/bin/env bash
# One-GPU figure of issue 25: the cost of one validation pass (64 held-out samples x 8 noise
# levels at 1728 x 8 layers / 12.9k tokens) and its share of training at every_steps 500.
# Run from the repository root on the GPU machine (carry .whl; FA4 used when /tmp/fa4 or
# .fa4b is there, else SDPA). Writes $OUT/validation_cost.{json,md,log}.
set -o pipefail
[ -d /tmp/site/megatron ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
if [ -d /tmp/fa4/flash_attn ] || [ -f /tmp/fa4-stage/half.00 ]; then source .fa4b/fa4-install.sh; fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/site:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
# mugv-formats reads its own version from package metadata: give the source tree one
mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 400 python3 packages/mugv-dit/benchmarks/validation_cost.py "$@" \
  --json "$OUT/validation_cost.json" --markdown "$OUT/validation_cost.md" 2>&1 \
  | grep -v -i warn | tee "$OUT/validation_cost.log"
