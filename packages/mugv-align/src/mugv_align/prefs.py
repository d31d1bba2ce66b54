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
import os
from pathlib import Path

from mugv_formats import (
    LATENT_SHARDS_FORMAT,
    PREFERENCE_FORMAT,
    KTOSample,
    LatentDataset,
    LatentShardWriter,
    PreferencePair,
    derive_header,
    read_preference_data,
    write_preference_data,
)
from mugv_formats.outputs import (
    OutputError,
    artifact_kind,
    check_not_nested,
    claim_output,
)

from mugv_align import __version__

PRODUCER = f"mugv-align {__version__}"
_PAIR_FIELDS = {"chosen", "rejected", "caption", "label_source", "weight"}
_KTO_FIELDS = {"key", "label", "desirable", "caption", "label_source", "weight"}
_TRUE = {"1", "true", "yes", "pass", "good", "desirable"}
_FALSE = {"0", "false", "no", "fail", "bad", "undesirable"}


def read_label_rows(path: str | Path) -> list[dict]:
    """Rows of a CSV (header line) or JSONL labels file, as dicts of strings / values."""
    return [row for _, row in read_label_lines(path)]


def read_label_lines(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` of a CSV (header line) or JSONL labels file. A row that is not
    well formed (a CSV row with more or fewer fields than the header, text that is not
    UTF-8, a JSONL line that is not an object) is a ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist")
    try:
        return _read_label_lines(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None


def _read_label_lines(path: Path) -> list[tuple[int, dict]]:
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {n}: not a JSON object")
            rows.append((n, row))
        return rows
    if path.suffix.lower() == ".csv":
        rows = []
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for r in reader:
                where = f"{path} line {reader.line_num}"
                if None in r:  # more fields than the header names
                    raise ValueError(
                        f"{where}: {len(r[None])} field(s) beyond the header's "
                        f"{len(reader.fieldnames or [])} columns ({r[None]!r:.80})"
                    )
                short = [k for k, v in r.items() if v is None]
                if short:  # fewer fields than the header names
                    raise ValueError(f"{where}: field {short[0]!r} missing (row too short)")
                rows.append((reader.line_num, dict(r)))
        return rows
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
    latents: str | Path,
    labels: str | Path,
    output: str | Path,
    *,
    kind: str | None = None,
    overwrite: bool = False,
    append: bool = False,
) -> tuple[str, int]:
    """Write preference data from labels; returns (kind, number of items).

    ``output`` must be a new folder (``mugv_formats.outputs.claim_output``: a complete
    preference set there is replaced only with ``overwrite``; anything else, e.g. a latent
    dataset, is refused, as is an output that is, holds or sits in the latents or the
    labels). ``append`` adds the items to the preference set at ``output`` instead, after
    checking that it is complete, of the same kind and over the same latent dataset;
    duplicates of its items are refused."""
    latents, labels = Path(latents), Path(labels)
    if not (latents / "dataset.json").is_file():
        raise ValueError(f"latent dataset {latents} does not exist (no dataset.json)")
    if append and overwrite:
        raise ValueError("--append and --overwrite exclude each other")
    check_not_nested(output, [latents, labels], "--output")
    claim = None
    old_items: list = []
    if append:
        old_items = _appendable(Path(output), latents)
    else:
        claim = claim_output(output, PREFERENCE_FORMAT, overwrite=overwrite, what="--output")
    keys = {r.key: r for r in LatentDataset(latents).records()}
    rows = read_label_lines(labels)
    if not rows:
        raise ValueError(f"{labels}: no label rows")
    if kind is None:
        kind = "dpo" if "chosen" in rows[0][1] else "kto"
    fields = _PAIR_FIELDS if kind == "dpo" else _KTO_FIELDS
    items, seen = [], {}
    for old in old_items:
        old_kind = "dpo" if isinstance(old, PreferencePair) else "kto"
        if old_kind != kind:
            raise ValueError(f"--append: {output} holds {old_kind} items, these labels are {kind}")
        seen[(old.chosen, old.rejected) if kind == "dpo" else (old.key,)] = f"in {output}"
    for n, (line, row) in enumerate(rows, 1):
        where = f"{labels} line {line}, row {n}"
        unknown = sorted(str(k) for k in set(row) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown columns {unknown} (allowed {sorted(fields)})")
        row = {k: v for k, v in row.items() if v not in (None, "")}
        extra = {k: row[k] for k in ("caption", "label_source") if k in row}
        if "weight" in row:
            try:
                extra["weight"] = float(row["weight"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{where}: field 'weight' = {row['weight']!r} is not a number"
                ) from None
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
        output if claim is None else claim.write_path,
        [*old_items, *items],
        latent_dataset=latents.resolve(),
        producer=PRODUCER,
        config={"labels": str(labels)},
    )
    if claim is not None:
        claim.commit()
    return kind, len(items)


def _appendable(output: Path, latents: Path) -> list:
    """The items of the preference set at ``output`` when items over ``latents`` may be
    appended to it: a complete ``mugv.preference-data`` set over the same latent dataset."""
    found = artifact_kind(output)
    if found != PREFERENCE_FORMAT:
        what = f"a {found}" if found else "no complete preference set"
        raise OutputError(f"--append: {output} holds {what}, not a {PREFERENCE_FORMAT}")
    header, items = read_preference_data(output)
    theirs = Path(header.latent_dataset)
    theirs = theirs if theirs.is_absolute() else output / theirs
    if os.path.realpath(theirs) != os.path.realpath(latents):
        raise OutputError(
            f"--append: {output} refers to the latent dataset {theirs}, not {latents}; items "
            "over another latent set cannot be merged into it"
        )
    return list(items)


def make_real_pairs(
    real: str | Path,
    generated: str | Path,
    output: str | Path,
    *,
    max_per_caption: int = 1,
    overwrite: bool = False,
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
    check_not_nested(output, [real, generated], "--output")
    settings = {"real": os.path.realpath(real), "generated": os.path.realpath(generated)}
    lat_claim = claim_output(
        output / "latents", LATENT_SHARDS_FORMAT, overwrite=overwrite, settings=settings,
        what="--output latents folder",
    )  # fmt: skip
    pref_claim = claim_output(
        output / "prefs", PREFERENCE_FORMAT, overwrite=overwrite, what="--output prefs folder"
    )
    with LatentShardWriter(lat_claim.write_path, header, energon=False) as writer:
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
    lat_claim.commit()
    write_preference_data(
        pref_claim.write_path,
        pairs,
        latent_dataset="../latents",
        producer=PRODUCER,
        config={"real": str(real), "generated": str(generated), "skipped": skipped},
    )
    pref_claim.commit()
    return len(pairs)
