"""Helpers shared by the mugv-formats tests (imported via conftest's sys.path entry)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from mugv_formats import ClipRecord


def clip_record(i: int, **kw) -> ClipRecord:
    base = dict(
        key=f"clip{i:03d}",
        source=f"/videos/v{i}.mp4",
        start_s=0.5 * i,
        end_s=0.5 * i + 2.0,
        fps=24.0,
        num_frames=48,
        width=64,
        height=48,
        scores={"sharpness": 250.0 + i, "motion": 1.5 + i},
        caption=f"a dog number {i}",
        tags=["dog"],
    )
    base.update(kw)
    return ClipRecord(**base)


def rewrite_tar(src: Path, dst: Path, mutate) -> None:
    """Copy tar ``src`` to ``dst`` passing (name, data) through ``mutate`` -> list of
    (TarInfo, data)."""
    with tarfile.open(src) as t_in, tarfile.open(dst, "w") as t_out:
        for info in t_in.getmembers():
            data = t_in.extractfile(info).read()
            for new_info, new_data in mutate(info, data):
                new_info.size = len(new_data) if new_data is not None else 0
                t_out.addfile(new_info, io.BytesIO(new_data) if new_data is not None else None)


def set_json_field(path: Path, **fields) -> None:
    d = json.loads(path.read_text())
    d.update(fields)
    path.write_text(json.dumps(d))
