#!/usr/bin/env bash
# One-GPU run of mugv-align's LoRA step benchmark (issue 26, "Numbers"):
#   10b preset at 720p x 105 frames, rank 64 attention + FFN: LoRA-DPO step vs LoRA-SFT step
#   (one pair, reference = adapters off), one sample at a time (align.pair_chunking
#   per_sample), full recompute; then 2b width x 8 layers: full-parameter DPO vs LoRA-DPO.
#   Step time and peak memory, in one process per case.
# From the repository root, carrying .whl (megatron-core, pydantic; safetensors if missing):
#     OUT=$OUT bash packages/mugv-align/benchmarks/run_lora.sh 10b     (~4-5 min, limit 390 s)
#     OUT=$OUT bash packages/mugv-align/benchmarks/run_lora.sh 2b8     (~1.5 min, limit 150 s)
# (no argument: both, one after the other).
# FA4 is used when staged (/tmp/fa4 or .fa4b, see mugv-dit's run_h200.sh), else SDPA.
# Outputs under $OUT: env.txt, lora_step_{10b,2b8}.{json,md,log}.
set -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ! python3 -c "import flash_attn.cute" 2>/dev/null; then
  if [ -f .fa4b/fa4-install.sh ]; then
    source .fa4b/fa4-install.sh || echo "fa4: not installed; attention runs SDPA"
  elif [ -d /tmp/fa4/flash_attn ]; then
    export PYTHONPATH=/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "fa4: not installed; attention runs SDPA"
  fi
fi
# megatron-core / pydantic / safetensors from the carried wheels when the machine lacks them
for mod in megatron.core pydantic safetensors yaml; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    python3 -m pip install -q --no-index --find-links .whl --target /tmp/site \
      "$( [ "$mod" = megatron.core ] && echo megatron-core || ([ "$mod" = yaml ] && echo pyyaml || echo "$mod"))" \
      2>&1 | tail -2
  fi
done
src=$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-dit/src
src=$src:$PWD/packages/mugv-align/src
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/site:$src
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' \
  > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
NOISE="FutureWarning|DeprecationWarning|^ +warnings\.warn|^ +return func|^ +checkpoint\.load"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch, megatron.core as m; print('torch', torch.__version__, 'megatron-core', m.__version__)"
  python3 -c "import flash_attn.cute; print('fa4 ok')" 2>/dev/null || echo "fa4 missing: SDPA"
} 2>&1 | tee "$OUT/env.txt"
t0=$SECONDS
declare -A LIMIT=([10b]=390 [2b8]=150)
for case in ${@:-10b 2b8}; do
  set -- "$case" "${LIMIT[$case]:-150}"
  echo "=== lora_step.py --case $1 (limit $2 s)"
  timeout -k 10 "$2" python3 packages/mugv-align/benchmarks/lora_step.py --case "$1" \
    --output "$OUT" ${LORA_EXTRA:-} 2>&1 | grep --line-buffered -v -E "$NOISE" \
    | tee "$OUT/lora_step_$1.log"
  echo "=== rc ${PIPESTATUS[0]} (124: cut at the limit), total $((SECONDS - t0)) s"
done
