#!/usr/bin/env bash
# GPU-machine side of gpu-carry.sh: `source .infer-wheels/gpu-install.sh` installs every carried
# wheel whose distribution is not installed, or installed at another version (e.g. an older
# huggingface-hub than transformers 5 accepts), into /tmp/infer-deps (no index, no deps), and
# puts it first on PYTHONPATH, with the workspace sources (packages/*/src).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
missing=$(python3 - "$here" <<'PY'
import importlib.metadata as m, pathlib, re, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    try:
        if m.version(dist) != whl.name.split("-")[1]:
            print(whl)
    except m.PackageNotFoundError:
        print(whl)
PY
)
if [ -n "$missing" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/infer-deps $missing
fi
root=$(cd "$here/.." && pwd)
export PYTHONPATH=/tmp/infer-deps:$(ls -d "$root"/packages/*/src | paste -sd:)${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import diffusers, transformers, peft, mugv_infer; print('mugv-infer deps: ready', diffusers.__version__, transformers.__version__)"
