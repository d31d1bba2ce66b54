#!/usr/bin/env bash
# Prepares the wheels mugv-infer needs on a GPU machine that has torch but no package index
# (and no diffusers / transformers / peft). Run from the repository root, here:
#     bash packages/mugv-infer/benchmarks/gpu-carry.sh
# It fills the git-ignored folder .infer-wheels/ (pins from uv.lock, CPython 3.12 manylinux
# wheels, no torch / CUDA / triton, no PyAV: the benchmark and GPU tests write no MP4; torchao
# for runtime.quantization=fp8: 0.18 needs torch >= 2.11, its abi3 wheel fits cp312) and
# copies gpu-install.sh into it. Carry .infer-wheels to the GPU machine, then there:
#     source .infer-wheels/gpu-install.sh      # installs what is missing into /tmp/infer-deps
set -euo pipefail
PY=${PY:-3.12}
exclude=$(git rev-parse --git-common-dir)/info/exclude  # a worktree's .git is a file
grep -qx "/.infer-wheels/" "$exclude" 2>/dev/null || echo "/.infer-wheels/" >> "$exclude"
rm -rf .infer-wheels && mkdir -p .infer-wheels
pins=$(uv export --package mugv-infer --extra fp8 --no-hashes --no-emit-workspace --frozen --no-dev \
  | grep -v '^#\|^ \|^-e\|^\s*$' | sed 's/ ;.*//')
want="diffusers transformers tokenizers huggingface-hub hf-xet httpx2 httpcore2 httpx2-jsfetch
anyio h11 click typer shellingham rich markdown-it-py mdurl pygments annotated-doc fsspec filelock
importlib-metadata zipp lazy-importer regex requests certifi charset-normalizer idna urllib3
truststore safetensors sentencepiece peft accelerate psutil torchao"
reqs=()
for name in $want; do
  pin=$(echo "$pins" | grep -i "^$name==" | head -1 || true)
  [ -n "$pin" ] && reqs+=("$pin")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .infer-wheels "${reqs[@]}"
cp "$(dirname "$0")/gpu-install.sh" .infer-wheels/
du -sh .infer-wheels
