#!/usr/bin/env bash
# One-GPU H200 benchmark of mugv-dit against diffusers Wan, with FlashAttention-4.
# Run from the repository root on the GPU machine, in two calls on the same warm machine
# (flash-attn-4's wheels travel in two halves, see ../shared/gpu/fa4-carry.sh):
#   call 1 (carry .fa4a .whl):  bash packages/mugv-dit/benchmarks/run_h200.sh stage
#   call 2 (carry .fa4b):       bash packages/mugv-dit/benchmarks/run_h200.sh PART
# PART: tests | small (12.9k-token cases) | large (50.4k-token cases) | all
#       graph (the graphed-step and trainer cuda_graph GPU tests, then mug-fast vs the
#       graphed steps at $CASES) | curve (loss_curve.py: 200 trainer steps, eager vs the
#       defaults, same seed; CURVE_ARGS passes options, e.g. "--no-repeat --steps 100")
set -o pipefail
if [ "${1:-}" = stage ]; then
  bash .fa4a/fa4-install.sh stage || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  echo "wheels installed into /tmp/site"
  exit 0
fi
part=${1:-all}
source .fa4b/fa4-install.sh || exit 1
export PYTHONPATH=$PYTHONPATH:/tmp/site:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
# mugv-formats reads its own version from package metadata: give the source tree one
mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if [ "$part" = tests ] || [ "$part" = all ]; then
  # the whole report goes to the log (failures with their messages), its end to the console
  COLUMNS=200 timeout 240 python3 -m pytest -m gpu packages/mugv-dit/tests/test_gpu.py \
    packages/mugv-dit/tests/test_gpu_fa4.py packages/mugv-dit/tests/test_optimizer_step.py -q -p no:cacheprovider --tb=short -rfEX \
    -W ignore::DeprecationWarning -W ignore::UserWarning > "$OUT/gpu_tests.log" 2>&1
  tail -30 "$OUT/gpu_tests.log"
fi
if [ "$part" = graph ]; then
  COLUMNS=200 timeout 300 python3 -m pytest -m gpu packages/mugv-dit/tests/test_graphed_step.py \
    packages/mugv-dit/tests/test_train_graphs.py \
    -q -p no:cacheprovider --tb=short -rfEX -s -W ignore::DeprecationWarning \
    -W ignore::UserWarning > "$OUT/graph_test.log" 2>&1
  grep -E "graph parity|trainer graphs|captures|passed|failed|Error|error" "$OUT/graph_test.log" | tail -20
  cd packages/mugv-dit/benchmarks
  timeout 300 python3 train_step.py --impl ${IMPLS:-mug-fast mug-graphed mug-graphed-fb} \
    --case ${CASES:-1728x8@12.9k} --warmup 3 --iters 8 --label graph --json "$OUT/graph.json" \
    2>&1 | grep -v -i warn | tee "$OUT/graph.log"
  exit 0
fi
if [ "$part" = curve ]; then
  # issue 29 item 4: 200-step loss curves, eager vs the current defaults (graphs + LN recompute)
  cd packages/mugv-dit/benchmarks
  timeout 570 python3 loss_curve.py --out "$OUT" ${CURVE_ARGS:-} 2>&1 | grep -v -i warn \
    | tee "$OUT/loss_curve.log"
  exit $?
fi
cd packages/mugv-dit/benchmarks
IMPLS=${IMPLS:-mug-fused mug-fa4 mug-fast wan wan-fa4}
if [ "$part" = small ] || [ "$part" = all ]; then
  timeout 400 python3 train_step.py --impl $IMPLS --case 1728x8@12.9k 3456x4@12.9k \
    --warmup 3 --iters 8 --label h200-small --json "$OUT/small.json" \
    --profile-dir "$OUT" 2>&1 | grep -v -i warn | tee "$OUT/small.log"
fi
if [ "$part" = large ] || [ "$part" = all ]; then
  timeout 400 python3 train_step.py --impl $IMPLS --case 1728x4@50.4k 3456x2@50.4k \
    --warmup 2 --iters 4 --label h200-large --json "$OUT/large.json" \
    --profile-dir "$OUT" 2>&1 | grep -v -i warn | tee "$OUT/large.log"
fi
