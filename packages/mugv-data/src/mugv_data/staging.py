"""Per-source staging area that makes runs resumable.

``OUT/.staging/clips/KEY.mp4`` and ``thumbs/KEY.jpg`` are written first, then
``sources/SOURCE_ID.json`` atomically: a source counts as done only when its JSON exists, so a
killed run redoes at most the sources that were in flight.

Every folder of ours in the output is a real folder (:func:`own_dir`) and every file is written
by the atomic writers, which refuse a symbolic link at their target: a link planted in an
output cannot send the run's writes (or its clean-up) outside it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mugv_formats import atomic_write_bytes, atomic_write_text
from mugv_formats.atomic import refuse_symlink

from mugv_data.inputs import STAGING
from mugv_data.per_source import ClipOutcome, SourceResult


def own_dir(root: Path, *parts: str) -> Path:
    """``root/parts...`` as real folders (made when missing): a symbolic link at any of them
    is refused (one line naming it), so nothing is written or removed through it."""
    path = Path(root)
    for part in parts:
        path = path / part
        refuse_symlink(path, "folder")
        path.mkdir(exist_ok=True)
    return path


class Staging:
    def __init__(self, out_dir: str | Path) -> None:
        self.root = own_dir(Path(out_dir), STAGING)
        self.sources = own_dir(self.root, "sources")
        self.clips = own_dir(self.root, "clips")
        self.thumbs = own_dir(self.root, "thumbs")

    def done(self, sid: str) -> bool:
        return (self.sources / f"{sid}.json").is_file()

    def save(self, res: SourceResult) -> None:
        """Persist one source's result (media first, JSON marker last)."""
        data = asdict(res)
        for c, cd in zip(res.clips, data["clips"]):
            if c.mp4 is not None:
                atomic_write_bytes(self.clips / f"{c.key}.mp4", c.mp4)
            if c.thumb_jpeg is not None:
                atomic_write_bytes(self.thumbs / f"{c.key}.jpg", c.thumb_jpeg)
            cd["mp4"] = None
            cd["thumb_jpeg"] = None
            cd["has_mp4"] = c.mp4 is not None
        atomic_write_text(self.sources / f"{res.source_id}.json", json.dumps(data))

    def load(self, sid: str) -> SourceResult:
        data = json.loads((self.sources / f"{sid}.json").read_text())
        clips = []
        for cd in data.pop("clips"):
            cd.pop("has_mp4", None)
            clips.append(ClipOutcome(**cd))
        return SourceResult(**data, clips=clips)

    def mp4_path(self, key: str) -> Path:
        return self.clips / f"{key}.mp4"

    def thumb_path(self, key: str) -> Path:
        return self.thumbs / f"{key}.jpg"
