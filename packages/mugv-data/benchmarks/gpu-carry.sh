#!/usr/bin/env bash
# Wheels the GPU image lacks for benchmarks/nvdec_decode.py, into .data-wheels/ (git-ignored
# through .git/info/exclude): PyAV (with its bundled FFmpeg 8, NVDEC decoders included),
# torchcodec 0.16 (CUDA 13 build on PyPI; torch >= 2.11), pydantic and PySceneDetect (for
# benchmarks/model_pool.py, whose other needs, OpenCV, pyarrow, PyYAML and tqdm, the image has). ~48 MB.
# decord (13.6 MB) is left out so that the call stays under 64 MiB; its rows then say "error".
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.data-wheels/' "$exclude" 2>/dev/null || echo '/.data-wheels/' >>"$exclude"
mkdir -p .data-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .data-wheels \
    av==18.1.0 torchcodec==0.16.0 pydantic==2.14.3 pydantic_core==2.50.4 \
    annotated_types==0.8.0 typing_inspection==0.4.5 scenedetect==0.6.7
du -sh .data-wheels
