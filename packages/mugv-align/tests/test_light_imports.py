"""EMA snapshots and the export side of mugv-align's CLI are plain weights: reading,
averaging and folding them imports no Megatron-Core (seconds a process; issue 25)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import mugv_align.cli, mugv_align.snapshots
from mugv_align.snapshots import list_snapshots, reconstruction_weights, weighted_average
print(sorted(m for m in sys.modules if m == "megatron.core" or m.startswith("megatron.core.")))
"""


def test_snapshot_reading_does_not_import_megatron():
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-2000:]
