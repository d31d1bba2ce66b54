"""Building preference data (``mugv.preference-data``) from latent shards.

* :func:`make_prefs`: human labels (CSV or JSONL) over one latent dataset. A row is a pair
  (``chosen``, ``rejected``) or a pass/fail label (``key``, ``label`` in pass/fail, or
  ``desirable`` true/false); optional ``weight``, ``label_source``. Unknown keys,
  self-pairs and duplicates are errors naming the row.
* :func:`make_real_pairs` (RDPO-style): real clips as winners against the model's own
  samples for the same caption (generated latents written by mugv-infer as latent shards).
  Both sets are merged into one new latent dataset (keys prefixed ``real-`` and ``gen-``),
  which the preference data names.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mugv_formats import (
    KTOSample,
    LatentDataset,
    LatentShardWriter,
    PreferencePair,
    derive_header,
    write_preference_data,
)

from mugv_align import __version__

PRODUCER = f"mugv-align {__version__}"
_PAIR_FIELDS = {"chosen", "rejected", "caption", "label_source", "weight"}
_KTO_FIELDS = {"key", "label", "desirable", "caption", "label_source", "weight"}
_TRUE = {"1", "true", "yes", "pass", "good", "desirable"}
_FALSE = {"0", "false", "no", "fail", "bad", "undesirable"}


def read_label_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV (header line) or JSONL labels file, as dicts of strings / values."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {n}: not a JSON object")
            rows.append(row)
        return rows
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            return [dict(r) for r in csv.DictReader(f)]
    raise ValueError(f"labels file {path}: use .csv or .jsonl")


def _label(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: label {value!r} is not pass/fail")


def make_prefs(
    latents: str | Path, labels: str | Path, output: str | Path, *, kind: str | None = None
) -> tuple[str, int]:
    """Write preference data from labels; returns (kind, number of items)."""
    latents, labels = Path(latents), Path(labels)
    if not (latents / "dataset.json").is_file():
        raise ValueError(f"latent dataset {latents} does not exist (no dataset.json)")
    keys = {r.key: r for r in LatentDataset(latents).records()}
    rows = read_label_rows(labels)
    if not rows:
        raise ValueError(f"{labels}: no label rows")
    if kind is None:
        kind = "dpo" if "chosen" in rows[0] else "kto"
    fields = _PAIR_FIELDS if kind == "dpo" else _KTO_FIELDS
    items, seen = [], {}
    for n, row in enumerate(rows, 1):
        where = f"{labels} row {n}"
        unknown = sorted(set(row) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown columns {unknown} (allowed {sorted(fields)})")
        row = {k: v for k, v in row.items() if v not in (None, "")}
        extra = {k: row[k] for k in ("caption", "label_source") if k in row}
        if "weight" in row:
            extra["weight"] = float(row["weight"])
        if kind == "dpo":
            if "chosen" not in row or "rejected" not in row:
                raise ValueError(f"{where}: a pair needs 'chosen' and 'rejected'")
            chosen, rejected = str(row["chosen"]), str(row["rejected"])
            if chosen == rejected:
                raise ValueError(f"{where}: self-pair ({chosen!r} against itself)")
            ident = (chosen, rejected)
            names = [chosen, rejected]
        else:
            if "key" not in row:
                raise ValueError(f"{where}: a pass/fail label needs 'key'")
            label = row.get("label", row.get("desirable"))
            if label is None:
                raise ValueError(f"{where}: a pass/fail label needs 'label' or 'desirable'")
            ident = (str(row["key"]),)
            names = [ident[0]]
        for k in names:
            if k not in keys:
                raise ValueError(f"{where}: latent sample {k!r} not in {latents}")
        if ident in seen:
            raise ValueError(f"{where}: duplicate of row {seen[ident]} {list(ident)}")
        seen[ident] = n
        extra.setdefault("caption", keys[names[0]].caption)
        if kind == "dpo":
            items.append(PreferencePair(chosen=ident[0], rejected=ident[1], **extra))
        else:
            items.append(KTOSample(key=ident[0], desirable=_label(label, where), **extra))
    write_preference_data(
        output,
        items,
        latent_dataset=latents.resolve(),
        producer=PRODUCER,
        config={"labels": str(labels)},
    )
    return kind, len(items)


def make_real_pairs(
    real: str | Path, generated: str | Path, output: str | Path, *, max_per_caption: int = 1
) -> int:
    """RDPO-style pairs: each generated sample loses against a real sample of the same
    caption and latent shape. Writes ``OUTPUT/latents`` (merged latent shards) and
    ``OUTPUT/prefs`` (preference data); returns the number of pairs."""
    real, generated, output = Path(real), Path(generated), Path(output)
    for p in (real, generated):
        if not (p / "dataset.json").is_file():
            raise ValueError(f"latent dataset {p} does not exist (no dataset.json)")
    rds, gds = LatentDataset(real), LatentDataset(generated)
    rh, gh = rds.header, gds.header
    if rh.latent_channels != gh.latent_channels or rh.vae_checkpoint_id != gh.vae_checkpoint_id:
        raise ValueError(
            f"{generated} was encoded by another VAE ({gh.vae_checkpoint_id}, "
            f"{gh.latent_channels} ch) than {real} ({rh.vae_checkpoint_id}, {rh.latent_channels} ch)"
        )
    if rh.text_dim is None:
        raise ValueError(f"{real} has no text features; run `mugv-dit embed-text` first")
    real_by_caption: dict[str, list] = {}
    for s in rds:
        real_by_caption.setdefault(s.record.caption, []).append(s)
    header = derive_header(
        rh, producer=PRODUCER, config={"real": str(real), "generated": str(generated)}
    )
    pairs, used_real, skipped = [], {}, 0
    lat_dir = output / "latents"
    with LatentShardWriter(lat_dir, header, energon=False) as writer:
        for g in gds:
            cands = [
                r
                for r in real_by_caption.get(g.record.caption, [])
                if r.latents.shape == g.latents.shape
            ]
            if not cands:
                skipped += 1
                continue
            gkey = f"gen-{g.record.key}"
            text = g.text if g.text is not None else cands[0].text
            writer.write(g.record.for_rewrite(key=gkey), g.latents, text)
            for r in cands[:max_per_caption]:
                rkey = f"real-{r.record.key}"
                if rkey not in used_real:
                    writer.write(r.record.for_rewrite(key=rkey), r.latents, r.text)
                    used_real[rkey] = True
                pairs.append(
                    PreferencePair(
                        chosen=rkey,
                        rejected=gkey,
                        caption=g.record.caption,
                        label_source="real-vs-generated",
                    )
                )
    if not pairs:
        raise ValueError(
            f"no generated sample of {generated} shares a caption and latent shape with {real}"
        )
    write_preference_data(
        output / "prefs",
        pairs,
        latent_dataset="../latents",
        producer=PRODUCER,
        config={"real": str(real), "generated": str(generated), "skipped": skipped},
    )
    return len(pairs)
