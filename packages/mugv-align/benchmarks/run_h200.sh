#!/usr/bin/env bash
# One-H200 run of mugv-align's DPO step benchmark (issue 12, "Numbers"): the 2b width (1728)
# cut to 8 layers, 12,896 video tokens + 120 text tokens per sample; a pre-training step on
# two samples against a DPO step on the same two samples as one pair, with the live bf16
# reference and with precomputed reference errors, in one process: median step time and
# peak memory. Then the align GPU tests, if any are marked. The whole call stays under 300 s.
# Run from the repository root on a machine staged by
#     bash packages/mugv-dit/benchmarks/run_h200.sh stage             (carry .fa4a .whl)
# (and, for safetensors if the machine lacks it, mugv-infer's `run_h200.sh stage`), then
#     source .fa4b/fa4-install.sh; bash packages/mugv-align/benchmarks/run_h200.sh   (carry .fa4b)
# Outputs under $OUT: env.txt, dpo_step.log, dpo_step.json, dpo_step.md (the table).
set -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"

# FlashAttention-4 (mugv-dit's `auto` backend uses it after its self-check)
if ! python3 -c "import flash_attn.cute" 2>/dev/null; then
  if [ -f .fa4b/fa4-install.sh ]; then
    source .fa4b/fa4-install.sh || echo "fa4: not installed; attention runs SDPA"
  elif [ -d /tmp/fa4/flash_attn ]; then
    export PYTHONPATH=/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "fa4: not installed; attention runs SDPA"
  fi
fi
src=$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
src=$src:$PWD/packages/mugv-align/src
export PYTHONPATH=$PYTHONPATH:/tmp/site:/tmp/infer-deps:$src
export PYTHONUNBUFFERED=1
# library deprecation chatter dropped from the logs (our own UserWarnings, e.g. an FA4
# self-check that failed, stay)
NOISE="FutureWarning|DeprecationWarning|^ +warnings\.warn|^ +return func|^ +checkpoint\.load"
export CUDA_DEVICE_MAX_CONNECTIONS=1
# mugv-formats reads its own version from package metadata: give the source tree one
mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' \
  > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
# safetensors (export / init weights) from the carried wheels if the machine lacks it
if ! python3 -c "import safetensors" 2>/dev/null; then
  whl=$(ls .infer-wheels/safetensors-*.whl .whl/safetensors-*.whl 2>/dev/null | head -1)
  [ -n "$whl" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/infer-deps "$whl"
fi

{
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 - <<'PY'
import importlib
for name in ("torch", "triton", "megatron.core", "pydantic", "yaml", "safetensors",
             "torch.utils.tensorboard", "flash_attn.cute", "mugv_dit", "mugv_align"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:24s} {getattr(mod, '__version__', 'ok')}")
    except Exception as e:  # report, do not stop
        print(f"{name:24s} MISSING ({type(e).__name__}: {str(e)[:120]})")
PY
} 2>&1 | tee "$OUT/env.txt"

t0=$SECONDS
echo "=== dpo_step.py (limit 240 s)"
timeout -k 10 240 python3 packages/mugv-align/benchmarks/dpo_step.py --output "$OUT" \
  --steps 12 --warmup 4 ${DPO_EXTRA:-} 2>&1 | grep --line-buffered -v -E "$NOISE" \
  | tee "$OUT/dpo_step.log"
echo "=== dpo_step rc ${PIPESTATUS[0]} (124: cut at the limit), took $((SECONDS - t0)) s"

if grep -q "mark.gpu\|pytest.mark.gpu" packages/mugv-align/tests/*.py; then
  left=$((280 - (SECONDS - t0)))
  if [ "$left" -gt 20 ]; then
    echo "=== align GPU tests (limit $left s)"
    timeout -k 5 "$left" python3 -m pytest -m gpu packages/mugv-align/tests -rfEX -q \
      -p no:cacheprovider 2>&1 | tail -30 | tee -a "$OUT/dpo_step.log"
  fi
fi
