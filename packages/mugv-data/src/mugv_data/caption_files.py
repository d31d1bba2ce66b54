"""Captions read from files: sidecar `VIDEO.txt` or a CSV/JSONL table (the VLM captioner is
in ``caption_vlm.py``)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


def sidecar_caption(source: str | Path) -> str | None:
    """Text of ``VIDEO.txt`` next to ``VIDEO.ext`` (stripped), or None."""
    p = Path(source).with_suffix(".txt")
    if p.is_file():
        return p.read_text(encoding="utf-8", errors="replace").strip()
    return None


@dataclass(frozen=True)
class CaptionRow:
    source: str
    caption: str
    start_s: float | None = None
    end_s: float | None = None


class CaptionTable:
    """Captions keyed by source (absolute path or file name), optionally per time span.

    CSV needs a header with ``source`` and ``caption`` (``start_s``/``end_s`` optional);
    JSONL has one object per line with the same keys.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"captions.table_path {path} does not exist")
        rows: list[dict] = []
        if path.suffix.lower() in {".jsonl", ".ndjson"}:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: invalid JSON: {e}") from e
        elif path.suffix.lower() in {".csv", ".tsv"}:
            delim = "\t" if path.suffix.lower() == ".tsv" else ","
            # sources are file names: bytes that are not UTF-8 match the file system's names
            with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
                rows = list(csv.DictReader(f, delimiter=delim))
        else:
            raise ValueError(f"captions.table_path {path}: expected .csv, .tsv or .jsonl")
        self._by_key: dict[str, list[CaptionRow]] = {}
        for n, r in enumerate(rows, 1):
            if "source" not in r or "caption" not in r:
                raise ValueError(f"{path}: row {n} lacks 'source' or 'caption': {r}")

            def num(v):
                return None if v in (None, "") else float(v)

            row = CaptionRow(
                str(r["source"]),
                str(r["caption"]).strip(),
                num(r.get("start_s")),
                num(r.get("end_s")),
            )
            self._by_key.setdefault(row.source, []).append(row)

    def lookup(self, source: str, start_s: float, end_s: float) -> str | None:
        """Caption of the row for ``source`` overlapping [start_s, end_s) the most; rows
        without a span cover the whole video."""
        rows = self._by_key.get(str(Path(source).resolve())) or self._by_key.get(source)
        if rows is None:
            rows = self._by_key.get(Path(source).name)
        if not rows:
            return None
        best, best_overlap = None, -1.0
        for r in rows:
            if r.start_s is None or r.end_s is None:
                overlap = 0.0
            else:
                overlap = min(end_s, r.end_s) - max(start_s, r.start_s)
                if overlap <= 0:
                    continue
            if overlap > best_overlap:
                best, best_overlap = r.caption, overlap
        return best
