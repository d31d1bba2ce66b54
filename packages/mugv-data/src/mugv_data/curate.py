"""The curation driver: discover -> per-source stages on an engine -> dataset-level stages
(``stages/dataset.py``: dedup, then captions, tags, balance) -> clip shards, rejects table,
report.

Output directory::

    shard-*.tar, shard-*.parquet, manifest.parquet, dataset.json   (mugv_formats clip shards)
    rejects.parquet        one row per dropped file or clip: source, key, stage, kind, reason
    resolved_config.yaml   the config that made this run
    summary.json           counts per stage, timings
    report.html + report/  thumbnails and score histograms
    .staging/              per-source results (resume); clip mp4s are removed when done
    .mugv-output.json      ownership marker (mugv_formats.outputs): kind and result settings
    .mugv-lock             advisory lock held by the running curation

The output is claimed before any work (:func:`mugv_formats.outputs.claim_output`, kind
``mugv.clip-shards``): a new or empty folder is written; an interrupted curation of ours (our
marker, no ``dataset.json``) with the same result settings is resumed, with other settings
refused naming the changed fields; a complete clip-shard dataset is replaced only with
``overwrite`` (built beside it, swapped in at the end); anything else (a user's folder, a run
folder, another kind of dataset, a file, a link) is refused, as is an output that is, lies
in, or holds an input. The claim and the whole run hold the output's lock, so a second
curation on the same output is refused naming the first.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mugv_formats import (
    CLIP_SHARDS_FORMAT,
    ClipDataset,
    ClipRecord,
    ClipShardWriter,
    atomic_write_bytes,
    atomic_write_text,
)
from mugv_formats.outputs import (
    LOCK_FILE,
    MARKER,
    artifact_kind,
    check_not_nested,
    claim_output,
    marker_kind,
    output_lock,
)
from tqdm import tqdm

from mugv_data import __version__
from mugv_data.config import CurateConfig, dump_config
from mugv_data.engines import make_engine
from mugv_data.inputs import discover_inputs, printable, printable_tree, source_id
from mugv_data.per_source import SourceResult
from mugv_data.report import write_report
from mugv_data.stages.dataset import (
    KeptClip,
    build_dataset_stages,
    reject_row,
    run_dataset_stages,
)
from mugv_data.staging import Staging

REJECTS = "rejects.parquet"
RESOLVED_CONFIG = "resolved_config.yaml"
SUMMARY = "summary.json"
PRODUCER = f"mugv-data {__version__}"


@dataclass
class CurateSummary:
    out_dir: Path
    sources: int
    sources_rejected: int
    clips_seen: int
    clips_kept: int
    rejects_by_stage: dict[str, int]
    seconds: float
    timings: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["out_dir"] = str(self.out_dir)
        return d


def run_sources(
    config: CurateConfig, sources: list[Path], staging: Staging, progress: bool
) -> None:
    """Run per-source stages for sources not yet staged."""
    todo = [s for s in sources if not staging.done(source_id(s))]
    if not todo:
        return
    engine = make_engine(config)
    try:
        bar = tqdm(total=len(todo), desc="sources", unit="video", disable=not progress)
        for res in engine.map(todo):
            staging.save(res)
            bar.update(1)
            bar.set_postfix(kept=sum(c.kept for c in res.clips))
        bar.close()
    finally:
        engine.close()


#: Config sections that decide what a run produces (engine and input may change on resume).
RESULT_SECTIONS = ("decode", "split", "clip", "filters", "captions", "tags", "dedup", "balance")


def result_settings(config: CurateConfig) -> dict[str, Any]:
    """The settings that shape a curation's clips, flat (``filters.sharpness.min``): kept in
    the output's ownership marker; a run resumes only an output made with the same ones."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for section in RESULT_SECTIONS:
        walk(section, getattr(config, section).model_dump(mode="json"))
    flat["output.clips_per_shard"] = config.output.clips_per_shard
    return printable_tree(flat)


def input_roots(config: CurateConfig) -> list[Path]:
    """The input specs that name existing paths (list files by their own path)."""
    roots = []
    for spec in config.input.paths:
        p = Path(spec[1:] if spec.startswith("@") else spec).expanduser()
        if p.exists():
            roots.append(p)
    return roots


def curate(
    config: CurateConfig, *, progress: bool = True, overwrite: bool = False
) -> CurateSummary:
    """Run a full curation into ``config.output.path`` (claimed and locked, see the module
    doc); an interrupted run is resumed by running it again with the same settings, a
    complete output is replaced only with ``overwrite``."""
    t0 = time.perf_counter()
    if not config.output.path:
        raise ValueError("output.path is not set (use --output DIR)")
    if not config.input.paths:
        raise ValueError("input.paths is empty (use --input PATH ...)")
    final = Path(config.output.path)
    inputs = input_roots(config)

    def claim():
        return claim_output(
            final,
            CLIP_SHARDS_FORMAT,
            overwrite=overwrite,
            inputs=inputs,
            settings=result_settings(config),
            what="--output",
        )

    # refusals that need no lock come before the lock file is made: nothing is left in a
    # folder that is not ours, or in an input
    check_not_nested(final, inputs, "--output")
    if not _ours_or_new(final):
        claim()  # raises: what is there is not ours
        raise AssertionError(f"claim_output accepted {final}")
    with output_lock(final, "--output"):
        claimed = claim()  # decided under the lock: resume, replace or new
        summary = _curate_into(claimed.write_path, final, config, progress, t0)
        claimed.commit()
    return summary


def _ours_or_new(path: Path) -> bool:
    """Nothing at ``path``, an empty folder, or a clip-shard output of ours (complete or not)."""
    if path.is_symlink():
        return False
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    if all(p.name in (MARKER, LOCK_FILE) for p in path.iterdir()):
        return True
    mark = marker_kind(path)
    return artifact_kind(path) == CLIP_SHARDS_FORMAT or (
        mark is not None and mark[0] == CLIP_SHARDS_FORMAT
    )


def _curate_into(
    out: Path, final: Path, config: CurateConfig, progress: bool, t0: float
) -> CurateSummary:
    atomic_write_text(out / RESOLVED_CONFIG, dump_config(config))
    sources = discover_inputs(config.input.paths, config.input.extensions, exclude=[out, final])
    if not sources:
        raise ValueError(f"no input videos found in {config.input.paths}")
    staging = Staging(out)
    run_sources(config, sources, staging, progress)

    results = [staging.load(source_id(s)) for s in sources]
    rejects: list[dict[str, Any]] = []
    kept: list[KeptClip] = []
    for r in results:
        if r.reject_stage is not None:
            rejects.append(
                reject_row(r.source, None, r.reject_stage, r.reject_kind, r.reject_detail)
            )
        for c in r.clips:
            if c.kept:
                kept.append(KeptClip(r, c))
            else:
                rejects.append(
                    reject_row(r.source, c.key, c.rejected_stage, c.rejected_stage, c.reason)
                )
    # dataset-level stages (dedup, captions, tags, balance): same reject rows as per-clip ones
    stages = build_dataset_stages(config, staging.mp4_path, progress=progress)
    kept, dataset_rejects = run_dataset_stages(stages, kept)
    rejects.extend(dataset_rejects)

    write_shards(config, out, kept, staging, progress)
    write_rejects(out / REJECTS, rejects)
    write_report(out, results, kept, staging, config)
    timings: Counter = Counter()
    for r in results:
        timings.update(r.timings)
    stage_counts = Counter(r["stage"] for r in rejects)
    summary = CurateSummary(
        out_dir=final,
        sources=len(results),
        sources_rejected=sum(r.reject_stage is not None for r in results),
        clips_seen=sum(len(r.clips) for r in results),
        clips_kept=len(kept),
        rejects_by_stage=dict(sorted(stage_counts.items())),
        seconds=time.perf_counter() - t0,
        timings={k: round(v, 4) for k, v in sorted(timings.items())},
    )
    atomic_write_text(out / SUMMARY, json.dumps(summary.as_dict(), indent=2))
    shutil.rmtree(staging.clips, ignore_errors=True)
    return summary


def write_shards(
    config: CurateConfig, out: Path, kept: list[KeptClip], staging: Staging, progress: bool
) -> None:
    """Write kept clips into clip shards, skipping clips already in complete shards."""
    writer = ClipShardWriter(
        out,
        producer=PRODUCER,
        config=printable_tree(config.model_dump(mode="json")),
        clips_per_shard=config.output.clips_per_shard,
    )
    existing = {r.key for r in writer.existing_records()}
    with writer:
        for k in tqdm(kept, desc="shards", unit="clip", disable=not progress):
            c = k.clip
            if c.key in existing:
                continue
            mp4 = staging.mp4_path(c.key)
            if not mp4.is_file():
                raise RuntimeError(f"staged clip {mp4} is missing; delete {staging.root} and rerun")
            rec = ClipRecord(
                key=c.key,
                source=printable(k.source.source),
                start_s=c.start_s,
                end_s=c.end_s,
                fps=c.fps,
                num_frames=c.num_frames,
                width=c.width,
                height=c.height,
                scores=c.scores,
                caption=printable(k.caption),
                tags=[printable(t) for t in k.tags],
                sample_weight=k.weight,
                extra={
                    "source_start_frame": c.start_frame,
                    "source_end_frame": c.end_frame,
                    "source_fps": k.source.probe["fps"] if k.source.probe else None,
                    "decoder": k.source.decoder,
                },
            )
            writer.write(rec, mp4.read_bytes())


def write_rejects(path: Path, rows: list[dict[str, Any]]) -> None:
    schema = pa.schema(
        [
            ("source", pa.string()),
            ("key", pa.string()),
            ("stage", pa.string()),
            ("kind", pa.string()),
            ("reason", pa.string()),
        ]
    )
    # every string as valid UTF-8 (a source name's non-UTF-8 bytes as \xNN escapes)
    rows = [{k: printable(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_rejects(out_dir: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(Path(out_dir) / REJECTS).to_pylist()


def _load_results(out: Path, config: CurateConfig) -> list[SourceResult]:
    staging = Staging(out)
    sources = discover_inputs(config.input.paths, config.input.extensions, exclude=[out])
    return [staging.load(source_id(s)) for s in sources if staging.done(source_id(s))]


def rebuild_report(out_dir: str | Path) -> Path:
    """Rewrite ``report.html`` of a finished output directory from its staging and shards."""
    from mugv_data.config import load_config

    out = Path(out_dir)
    if artifact_kind(out) != CLIP_SHARDS_FORMAT or not (out / RESOLVED_CONFIG).is_file():
        raise ValueError(f"{out} is not a finished mugv-data curation output")
    with output_lock(out, "report folder"):
        return _rebuild_report(out, load_config(out / RESOLVED_CONFIG))


def _rebuild_report(out: Path, config: CurateConfig) -> Path:
    results = _load_results(out, config)
    by_key = {(c.key): (r, c) for r in results for c in r.clips}
    # dataset-level verdicts (dedup, captions, ...) live in rejects.parquet, not in staging
    if (out / REJECTS).is_file():
        for row in read_rejects(out):
            if row["key"] in by_key and by_key[row["key"]][1].rejected_stage is None:
                c = by_key[row["key"]][1]
                c.rejected_stage, c.reason = row["stage"], row["reason"]
    kept = []
    for rec in ClipDataset(out).records():
        if rec.key in by_key:
            r, c = by_key[rec.key]
            kept.append(
                KeptClip(r, c, caption=rec.caption, tags=list(rec.tags), weight=rec.sample_weight)
            )
    return write_report(out, results, kept, Staging(out), config)


def summarize_output(out_dir: str | Path) -> dict[str, Any]:
    """Counts, per-score statistics and rejects per stage of a curated output directory."""
    out = Path(out_dir)
    ds = ClipDataset(out)
    recs = ds.records()
    scores: dict[str, list[float]] = {}
    for r in recs:
        for k, v in r.scores.items():
            scores.setdefault(k, []).append(v)
    stats = {
        k: {"min": float(np.min(v)), "mean": float(np.mean(v)), "max": float(np.max(v))}
        for k, v in sorted(scores.items())
    }
    rejects = read_rejects(out) if (out / REJECTS).is_file() else []
    return {
        "format": ds.header.format,
        "version": ds.header.version,
        "producer": ds.header.producer,
        "clips": len(recs),
        "shards": len(ds.header.shards),
        "seconds_of_video": round(sum(r.duration_s for r in recs), 3),
        "tags": dict(Counter(t for r in recs for t in r.tags).most_common()),
        "scores": stats,
        "rejects_by_stage": dict(Counter(r["stage"] for r in rejects)),
    }
