#!/usr/bin/env bash
# One GPU machine (no package index): issue 24's one-GPU numbers with benchmarks/nvdec_decode.py,
# NVDEC (torchcodec) decode fps against CPU decoders of one 720p H.264 clip, and clips per hour
# through decode + CLIP embedding + aesthetic head. Run from the repository root there.
# Wheels the GPU image lacks, built here (both folders git-ignored):
#     bash packages/mugv-data/benchmarks/gpu-carry.sh        # .data-wheels: PyAV, torchcodec, pydantic
#     mkdir -p .decord-whl && python3 -m pip download --no-deps --only-binary=:all: \
#         --python-version 3.12 --platform manylinux2010_x86_64 -d .decord-whl decord==0.6.0
# .data-wheels (46 MB) and decord (13.6 MB) do not fit one call's 64 MiB with the tree: carry
# .decord-whl with any earlier call on the same machine and install it with `stage`
# (/tmp survives between calls while the machine stays warm):
#     call 1 (carry .decord-whl ...):  bash packages/mugv-data/benchmarks/run_gpu.sh stage
#     call 2 (carry .data-wheels):     OUT=$OUT bash packages/mugv-data/benchmarks/run_gpu.sh stage nvdec
# Without decord its rows say "error"; every other row still runs.
# PARTs: stage (install what is carried into /tmp/data-deps) | nvdec (the benchmark, limit NVDEC_LIMIT_S, default 420 s;
# NVDEC_ARGS adds options, e.g. "--tiny --device cpu" for a smoke run on a CPU) | pool
# (benchmarks/model_pool.py --device cuda, limit POOL_LIMIT_S, default 300 s; POOL_ARGS adds
# options, e.g. "--sources 48"; needs no wheels beyond .data-wheels: the image has OpenCV and
# pyarrow, so model_pool-carry.sh's three calls are not needed)
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
DEPS=/tmp/data-deps
parts=${*:-stage nvdec}
for part in $parts; do
  case $part in
    stage)
      wheels=$(ls .data-wheels/*.whl .decord-whl/*.whl 2>/dev/null)
      if [ -z "$wheels" ]; then
        echo "stage: neither .data-wheels nor .decord-whl carried: nothing to install"
        continue
      fi
      # shellcheck disable=SC2086
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$DEPS" $wheels 2>&1 | grep -v -i "warning" | tail -3
      # mugv-formats reads its own version from package metadata: give the source tree one
      mkdir -p "$DEPS/mugv_formats-1.0.0.dist-info" "$DEPS/mugv_data-1.0.0.dist-info"
      printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' \
        > "$DEPS/mugv_formats-1.0.0.dist-info/METADATA"
      printf 'Metadata-Version: 2.1\nName: mugv-data\nVersion: 1.0.0\n' \
        > "$DEPS/mugv_data-1.0.0.dist-info/METADATA"
      ls "$DEPS" | grep dist-info
      ;;
    nvdec)
      export PYTHONPATH=$DEPS:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-data/src
      export PYTHONUNBUFFERED=1
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
      python3 -c "import av, torchcodec, torch, transformers, cv2; print('av', av.__version__, \
'torchcodec', torchcodec.__version__, 'torch', torch.__version__, 'transformers', \
transformers.__version__, 'cv2', cv2.__version__)" 2>&1 | tee "$OUT/env.txt"
      python3 -c "import decord; print('decord', decord.__version__)" 2>&1 | tail -1 | tee -a "$OUT/env.txt"
      timeout -k 10 "${NVDEC_LIMIT_S:-420}" python3 packages/mugv-data/benchmarks/nvdec_decode.py \
        ${NVDEC_ARGS:-} --json "$OUT/nvdec.json" --md "$OUT/nvdec.md" 2>&1 | tee "$OUT/nvdec.log" | tail -40
      echo "=== nvdec rc ${PIPESTATUS[0]} (124: cut at the limit)"
      ;;
    pool)
      # model_pool.py: the curation's own workers, per-worker models vs the model pool
      # (OpenCV, pyarrow, PyYAML, tqdm from the image; the rest from /tmp/data-deps)
      export PYTHONPATH=$DEPS:$PWD/packages/mugv-formats/src:$PWD/packages/mugv-data/src
      export PYTHONUNBUFFERED=1
      python3 -c "import cv2, pyarrow, yaml, scenedetect; print('cv2', cv2.__version__, \
'pyarrow', pyarrow.__version__, 'pyyaml', yaml.__version__, 'scenedetect', \
scenedetect.__version__)" 2>&1 | tail -1 | tee "$OUT/pool-env.txt"
      timeout -k 10 "${POOL_LIMIT_S:-300}" python3 packages/mugv-data/benchmarks/model_pool.py \
        --device cuda ${POOL_ARGS:-} --json "$OUT/model_pool.json" --md "$OUT/model_pool.md" 2>&1 \
        | tee "$OUT/model_pool.log" | tail -30
      echo "=== pool rc ${PIPESTATUS[0]} (124: cut at the limit)"
      ;;
    *) echo "unknown part $part (stage | nvdec | pool)"; exit 2 ;;
  esac
done
