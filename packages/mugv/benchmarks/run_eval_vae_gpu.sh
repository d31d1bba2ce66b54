#!/usr/bin/env bash
# `mugv eval vae` throughput (clips/s) of the `mugv` VAE preset at 256p and 720p on one GPU
# (issue 25). Run from the repository root with OUT set, with the wheels of .whl in $WHL for
# what the machine lacks. Random-initialised weights and synthetic clips (speed depends on
# neither; the device needs no PyAV): 4 clips of 17 frames at 720x1280 as uint8 .npy, which
# the eval protocol (docs/evaluation.md) resizes/crops like decoded videos; CLIPS=DIR uses
# another folder (videos or .npy). The PSNR of random weights means nothing. Two runs: float32 with
# the plain runtime, and bf16 autocast with mugv-vae's fast runtime (--fast). TINY=1: the
# tiny preset at 64x64 on the CPU (a dry run of this script).
set -uo pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/site
mkdir -p "$SITE" "$OUT"
WHL=${WHL:-.whl}
CLIPS=${CLIPS:-/tmp/eval-clips}
need() {  # need MODULE WHEEL_GLOB...: install the wheels when MODULE does not import
  local mod=$1; shift
  python3 -c "import $mod" 2>/dev/null && return 0
  local files=() g
  for g in "$@"; do files+=("$WHL"/$g); done
  echo "installing ${files[*]} for $mod"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "${files[@]}"
}
if [ -z "${TINY:-}" ]; then
  need pydantic 'pydantic-*.whl' 'pydantic_core-*.whl' 'annotated_types-*.whl' \
    'typing_inspection-*.whl' 'typing_extensions-*.whl'
  need yaml 'PyYAML-*.whl'
  need tqdm 'tqdm-*.whl'
  need diffusers 'diffusers-*.whl'
  for p in mugv-formats:1.0.0 mugv-kernels:0.1.0 mugv-vae:0.1.0 mugv:0.1.0; do
    n=${p%%:*}; v=${p##*:}; d="$SITE/${n//-/_}-$v.dist-info"; mkdir -p "$d"
    printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$n" "$v" > "$d/METADATA"
  done
  export PYTHONPATH="$SITE:packages/mugv-formats/src:packages/mugv-kernels/src:packages/mugv-vae/src:packages/mugv/src"
  PRESET=mugv; RES="256p 720p"; DEV=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
else
  PRESET=tiny; RES="64x64"; DEV=cpu
fi
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
if [ ! -d "$CLIPS" ]; then
  python3 - "$CLIPS" <<'PY'
import sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1]); out.mkdir(parents=True)
y, x = np.mgrid[0:720, 0:1280].astype(np.float32)
for i in range(4):
    frames = [127 + 100 * np.sin((x + 7 * t * (i + 1)) / (40 + 10 * i))[..., None]
              * np.cos(y[..., None] / (30 + 5 * i) + np.array([0.0, 1.0, 2.0])) for t in range(17)]
    np.save(out / f"synthetic_{i}.npy", np.clip(np.stack(frames), 0, 255).astype(np.uint8))
PY
fi
CKPT=/tmp/eval-vae-$PRESET
python3 - "$PRESET" "$CKPT" <<'PY'
import sys, torch
from mugv_vae.config import preset
from mugv_vae.model import MUGVAE
torch.manual_seed(0)
MUGVAE(preset(sys.argv[1])).save_pretrained(sys.argv[2])
PY
EVAL=(python3 -m mugv.cli eval vae "$CKPT" --clips "$CLIPS" --resolutions $RES --frames 17 --device "$DEV")
date -u +%FT%TZ | tee "$OUT/date.txt"
timeout 240 "${EVAL[@]}" --output "$OUT/fp32" 2>&1 | tail -n 4 | tee "$OUT/fp32.log"
timeout 180 "${EVAL[@]}" --precision bfloat16 --fast --output "$OUT/bf16-fast" 2>&1 | tail -n 4 | tee "$OUT/bf16-fast.log"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["| run | resolution | clips | clips/s (encode + decode, first clip = warm-up) | PSNR |", "|---|---|---|---|---|"]
for run in ("fp32", "bf16-fast"):
    f = out / run / "vae.json"
    if not f.is_file():
        lines.append(f"| {run} | (no result) | | | |")
        continue
    r = json.loads(f.read_text())
    for row in r["resolutions"]:
        lines.append(f"| {run} | {row['resolution']} {row['size'][0]}x{row['size'][1]} | {len(row['clips'])} "
                     f"| {row['clips_per_second']} | {row['mean']['psnr']:.2f} |")
(out / "throughput.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
