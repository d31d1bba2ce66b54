#!/usr/bin/env bash
# Fallback only: `run_gpu.sh stage pool` runs model_pool.py with .data-wheels alone (the GPU image
# has OpenCV, pyarrow, PyYAML and tqdm). Use these three calls where the image's own copies do
# not import or are too old for mugv-data's pins.
# Wheels the GPU image lacks for benchmarks/model_pool.py (the curation's per-source workers:
# OpenCV, PyAV, pyarrow, pydantic, PySceneDetect), for Python 3.12 x86_64, into three folders
# .pool-wheels/{1,2,3} (git-ignored through .git/info/exclude) of at most ~57 MB each: one
# device call carries one folder (64 MiB a call with the repository's tree).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
exclude=$(git rev-parse --git-path info/exclude)
for p in '/.pool-wheels/' '/.pool-site/'; do
    grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"
done
get() {
    local dir=$1
    shift
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$@"
}
# OpenCV's manylinux2014 build (56.6 MB; the manylinux_2_28 one is 61.2 MB, too big for one call)
mkdir -p .pool-wheels/1
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .pool-wheels/1 \
    opencv-python-headless==5.0.0.93
get .pool-wheels/2 pyarrow==26.0.1
get .pool-wheels/3 av==18.1.0 pydantic==2.14.3 pydantic_core==2.50.4 annotated_types==0.8.0 \
    typing_inspection==0.4.5 typing_extensions==4.16.0 scenedetect==0.6.7 pyyaml==6.0.3
du -sb .pool-wheels/*
