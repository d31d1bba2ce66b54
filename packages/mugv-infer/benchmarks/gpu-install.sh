#!/usr/bin/env bash
# GPU-machine side of gpu-carry.sh: `source .infer-wheels/gpu-install.sh` installs every carried
# wheel whose distribution is not installed yet into /tmp/infer-deps (no index, no deps), and
# puts it and the workspace sources (packages/*/src) on PYTHONPATH.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
missing=$(python3 - "$here" <<'PY'
import importlib.metadata as m, pathlib, re, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    try:
        m.version(dist)
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
