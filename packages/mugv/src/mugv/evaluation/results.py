"""Where ``mugv eval`` commands write: ``OUTPUT/NAME.json`` and ``OUTPUT/NAME.md``, atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _finite(x):
    """NaN / infinity become None (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def write_results(result: dict, text: str, output: Path, name: str) -> tuple[Path, Path]:
    """``OUTPUT/NAME.json`` (``result``) and ``OUTPUT/NAME.md`` (``text``)."""
    from mugv_formats import atomic_write_text

    output.mkdir(parents=True, exist_ok=True)
    js, md = output / f"{name}.json", output / f"{name}.md"
    atomic_write_text(js, json.dumps(_finite(result), indent=1) + "\n")
    atomic_write_text(md, text)
    return js, md
