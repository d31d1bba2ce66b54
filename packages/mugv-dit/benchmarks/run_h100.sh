#!/usr/bin/env bash
# One-GPU benchmark (H100): MUG-DiT (torch ops / fused mugv_kernels ops) vs diffusers Wan at
# matched width / heads / depth / tokens. Run from the repository root on the GPU machine.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/megatron_core-*.whl .whl/diffusers-*.whl .whl/pydantic*.whl \
  .whl/annotated_types-*.whl .whl/typing_inspection-*.whl .whl/typing_extensions-*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd packages/mugv-dit/benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/h100_gpu.txt"
(cd ../../.. && timeout 90 python3 -m pytest -m gpu packages/mugv-dit/tests/test_gpu.py -q \
  -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.log")
timeout 270 python3 train_step.py --impl mug mug-fused wan \
  --case 1728x8@12.9k 1728x4@50.4k 3456x4@12.9k 3456x2@50.4k \
  --warmup 2 --iters 5 --label h100-single --json "$OUT/h100.json" 2>&1 | tee "$OUT/h100.log"
# GPU smoke of the trainer itself (bf16, CUDA, torch_dist checkpoint, export) on the demo config.
# mugv-formats reads its own version from package metadata: give the source tree one.
mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
timeout 90 python3 gpu_trainer_smoke.py /tmp/dit-smoke 2>&1 | tee "$OUT/trainer_gpu.log"
