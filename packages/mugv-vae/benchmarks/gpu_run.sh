#!/usr/bin/env bash
# The GPU run behind docs/benchmarks/vae/: benchmark vs AutoencoderKLWan, then a short real
# training run on pre-decoded sample clips. Run from the repository root with OUT set;
# expects wheels (diffusers, pydantic, PyYAML, tqdm) in $WHL (.whl) for what the machine lacks,
# and the clips prepared by
# `python packages/mugv-vae/benchmarks/prepare_clips.py .vae_gpu` in .vae_gpu/.
set -uo pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/site
mkdir -p "$SITE"
WHL=${WHL:-.whl}
need() {  # need MODULE WHEEL_GLOB...: install the wheels when MODULE does not import
  local mod=$1; shift
  python3 -c "import $mod" 2>/dev/null && return 0
  local files=() g
  for g in "$@"; do files+=("$WHL"/$g); done  # glob inside the wheel folder
  echo "installing ${files[*]} for $mod"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "${files[@]}"
}
need pydantic 'pydantic-*.whl' 'pydantic_core-*.whl' 'annotated_types-*.whl' \
  'typing_inspection-*.whl' 'typing_extensions-*.whl'
need yaml 'PyYAML-*.whl'
need tqdm 'tqdm-*.whl'
need diffusers 'diffusers-*.whl'
# Source-tree packages have no installed metadata: give importlib.metadata a version for them.
for p in mugv-formats:1.0.0 mugv-kernels:0.1.0 mugv-vae:0.1.0; do
  n=${p%%:*}; v=${p##*:}; d="$SITE/${n//-/_}-$v.dist-info"; mkdir -p "$d"
  printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$n" "$v" > "$d/METADATA"
done
export PYTHONPATH="$SITE:packages/mugv-formats/src:packages/mugv-kernels/src:packages/mugv-vae/src"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
timeout "${BENCH_TIMEOUT:-230}" python3 packages/mugv-vae/benchmarks/bench_vae.py \
  --out "$OUT/bench_vae.json" 2>&1 | grep -v "kept in float32" | tee "$OUT/bench.log"
cp "$OUT/bench_vae.json.partial" "$OUT/bench_rows_partial.json" 2>/dev/null
if [ -n "${SKIP_TRAIN:-}" ]; then  # benchmark (+ GPU tests) only
  python3 -m pytest --version >/dev/null 2>&1 && timeout 90 python3 -m pytest -q -o addopts="" \
    -m gpu -p no:cacheprovider packages/mugv-vae/tests/test_gpu.py 2>&1 | tail -3
  exit 0
fi
timeout "${TRAIN_TIMEOUT:-200}" python3 packages/mugv-vae/benchmarks/train_curve.py \
  --train .vae_gpu/train --eval .vae_gpu/eval --out "$OUT/run" \
  --max-seconds "${TRAIN_SECONDS:-110}" 2>&1 | grep -v "it/s]" | tail -4
cp "$OUT/run/metrics.jsonl" "$OUT/metrics.jsonl" 2>/dev/null
rm -rf "$OUT/run"
python3 -m pytest --version >/dev/null 2>&1 && timeout 60 python3 -m pytest -q -m gpu \
  -p no:cacheprovider packages/mugv-vae/tests/test_gpu.py 2>&1 | tail -3
exit 0
