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

import functools
import itertools
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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
    atomic_write_text,
)
from mugv_formats.atomic import refuse_symlink
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
from mugv_data.clip_index import (
    RECORD_COLUMNS,
    IndexWriter,
    index_parts,
    index_row,
    read_part,
)
from mugv_data.config import CurateConfig, dump_config
from mugv_data.dataset_units import (
    TagBalance,
    caption_spec,
    caption_units,
    dedup_column,
    dedup_done,
    dedup_spec,
    read_caption_part,
    read_duplicates,
    write_caption_unit,
)
from mugv_data.engines import Engine, WorkerSpec, make_engine
from mugv_data.inputs import discover_inputs, printable, printable_tree, source_id
from mugv_data.model_pool import (
    build_model_worker,
    build_pooled_source_worker,
    model_pool_resources,
    model_stages_enabled,
)
from mugv_data.per_source import SourceResult, build_source_worker, worker_resources
from mugv_data.report import ReportBuilder
from mugv_data.stages.dataset import reject_row
from mugv_data.staging import Staging, own_dir
from mugv_data.tags import Tagger

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
    units_per_node: dict[str, int] = field(default_factory=dict)
    """Ray: work units (sources, dedup, caption units) run on each node (by node id) in this
    run; empty for the local engines."""

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["out_dir"] = str(self.out_dir)
        return d


def run_sources(
    engine: Engine, config: CurateConfig, sources: list[Path], staging: Staging, progress: bool
) -> None:
    """Run per-source stages for sources not yet staged, streaming: each result is staged
    (``sources/SID.json``, clip mp4s, thumbnails) as it returns and then dropped. With every
    source staged (a resumed run), no worker or model pool is started."""
    todo = (str(s) for s in sources if not staging.done(source_id(s)))
    first = next(todo, None)
    if first is None:
        return
    todo = itertools.chain([first], todo)
    try:
        spec = source_spec(config, engine)  # a model pool loads its models here
        with tqdm(desc="sources", unit="video", disable=not progress) as bar:
            for _, res in engine.map(spec, todo):
                staging.save(res)
                bar.update(1)
                bar.set_postfix(kept=sum(c.kept for c in res.clips))
    finally:
        engine.stop_pools()  # the model pool's resources go to the dataset stages


def source_spec(config: CurateConfig, engine: Engine | None = None) -> WorkerSpec:
    """The per-source workers. On the Ray or process engine with ``engine.model_pool.actors
    > 0`` and a model stage enabled, the model pool (Ray actors, or model-server processes) is
    started and the workers feed it (they then declare only the CPU stages' resources)."""
    mp = config.engine.model_pool
    if engine is not None and engine.has_pools and mp.actors > 0 and model_stages_enabled(config):
        actors = engine.start_pool(
            WorkerSpec("models", build_model_worker, model_pool_resources(config)),
            mp.actors,
            mp.max_restarts,
        )
        return WorkerSpec(
            "sources",
            functools.partial(build_pooled_source_worker, actors=actors),
            worker_resources(config, model_stages=False),
        )
    return WorkerSpec("sources", build_source_worker, worker_resources(config))


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
    """The streaming curation: the driver holds one index part, one caption unit and the
    results in flight at a time, never a list of every clip (see :mod:`mugv_data.clip_index`
    and :mod:`mugv_data.dataset_units`)."""
    atomic_write_text(out / RESOLVED_CONFIG, dump_config(config))
    sources = discover_inputs(config.input.paths, config.input.extensions, exclude=[out, final])
    if not sources:
        raise ValueError(f"no input videos found in {config.input.paths}")
    staging = Staging(out)
    with make_engine(config) as engine:
        # 1. per-source stages on the engine's workers, staged as they return
        run_sources(engine, config, sources, staging, progress)
        rejects = RejectsWriter(staging.root / f"{REJECTS}.partial")
        report = ReportBuilder(out, staging, config)
        counts = RunCounts()
        # 2. the kept clips' index (parquet parts), file and per-clip rejects streamed out
        index = IndexWriter(own_dir(staging.root, "index"))
        for s in tqdm(sources, desc="index", unit="video", disable=not progress):
            r = staging.load(source_id(s))
            counts.add_source(r)
            report.add_source(r)
            if r.reject_stage is not None:
                rejects.add(
                    reject_row(r.source, None, r.reject_stage, r.reject_kind, r.reject_detail)
                )
            for c in r.clips:
                if c.kept:
                    index.add(index_row(r, c))
                else:
                    rejects.add(
                        reject_row(r.source, c.key, c.rejected_stage, c.rejected_stage, c.reason)
                    )
                    report.add_clip(
                        r.source, r.source_id, c.key, (c.start_s, c.end_s), c.scores,
                        c.rejected_stage, c.reason,
                    )  # fmt: skip
        fingerprint = index.close()
        # 3. dedup over the index's embeddings, on a worker
        duplicates = run_dedup(engine, config, staging, index, fingerprint)
        # 4. captions and tags, unit by unit on caption workers (resumable per unit)
        captions_dir = own_dir(staging.root, "captions")
        if config.captions.source != "none":
            units = caption_units(index.folder, captions_dir, duplicates, config, staging.mp4_path)
            bar = tqdm(desc="captions", unit="unit", disable=not progress)
            for unit, rows in engine.map(caption_spec(config), units):
                write_caption_unit(captions_dir, unit["name"], rows)
                bar.update(1)
            bar.close()
        nodes = dict(getattr(engine, "units_per_node", {}))
    # 5. balance weights from the tag groups, then 6. shards, streaming the index again
    tagger = Tagger(config.tags.vocabulary) if config.tags.enabled else None
    balance = TagBalance(config.balance.alpha)
    for part, caps in _parts_with_captions(index.folder, captions_dir, config):
        for key in part.column("key").to_pylist():
            v = _verdict(key, duplicates, caps, tagger, config)
            if v.kept:
                balance.add(v.tags)
    done: list[CurateSummary] = []

    def finish() -> None:  # 7. rejects, report, summary; then the shard writer's dataset.json
        rejects.close(out / REJECTS)
        report.write()
        summary = CurateSummary(
            out_dir=final,
            sources=counts.sources,
            sources_rejected=counts.sources_rejected,
            clips_seen=counts.clips_seen,
            clips_kept=counts.clips_kept,
            rejects_by_stage=dict(sorted(rejects.stage_counts.items())),
            seconds=time.perf_counter() - t0,
            timings={k: round(v, 4) for k, v in sorted(counts.timings.items())},
            units_per_node=nodes,
        )
        atomic_write_text(out / SUMMARY, json.dumps(summary.as_dict(), indent=2))
        done.append(summary)

    write_shards(
        config, out, staging, index.folder, captions_dir, duplicates, tagger, balance,
        rejects, report, counts, progress, finish,
    )  # fmt: skip
    shutil.rmtree(staging.clips, ignore_errors=True)
    return done[0]


class RunCounts:
    """Counters of a run (sources, clips, per-stage timings summed over sources)."""

    def __init__(self) -> None:
        self.sources = 0
        self.sources_rejected = 0
        self.clips_seen = 0
        self.clips_kept = 0
        self.timings: Counter = Counter()

    def add_source(self, r: SourceResult) -> None:
        self.sources += 1
        self.sources_rejected += r.reject_stage is not None
        self.clips_seen += len(r.clips)
        self.timings.update(r.timings)


def run_dedup(
    engine, config: CurateConfig, staging: Staging, index: IndexWriter, fingerprint: str
) -> dict[str, tuple[str, float]]:
    """``{duplicate key: (kept key, similarity)}``, computed on a worker over the index's
    embedding store, or reused from a previous run of the same index."""
    if not config.dedup.enabled or index.rows == 0:
        return {}
    out = staging.root / "dedup.parquet"
    if not dedup_done(out, fingerprint):
        column = dedup_column(config, index.all_clip_embeddings)
        unit = dict(
            index=str(index.folder),
            column=column,
            store=str(staging.root / "dedup_store"),
            out=str(out),
            fingerprint=fingerprint,
        )
        for _ in engine.map(dedup_spec(config), [unit]):
            pass
    return read_duplicates(out)


@dataclass
class Verdict:
    """A kept-by-the-clip-stages clip after the dataset-level stages."""

    stage: str | None = None
    reason: str | None = None
    caption: str = ""
    tags: list[str] = field(default_factory=list)
    similarity: float | None = None

    @property
    def kept(self) -> bool:
        return self.stage is None


def _verdict(
    key: str, duplicates, caps: dict[str, dict[str, Any]], tagger, config: CurateConfig
) -> Verdict:
    if key in duplicates:
        of, sim = duplicates[key]
        t = config.dedup.threshold
        # the same words as the in-memory stage's (mugv_data.stages.dataset.DedupStage)
        return Verdict("dedup", f"near-duplicate of {of} (cos {sim:.4f} >= {t:g})", similarity=sim)
    row = caps.get(key)
    if row is None:  # captions.source=none
        return Verdict(tags=tagger("") if tagger is not None else [])
    if row["reject"] is not None:
        return Verdict("captions", row["reject"])
    return Verdict(caption=row["caption"], tags=list(row["tags"] or []))


def _parts_with_captions(index: Path, captions_dir: Path, config: CurateConfig):
    for pi, part in enumerate(index_parts(index)):
        caps = read_caption_part(captions_dir, pi) if config.captions.source != "none" else {}
        yield read_part(part, RECORD_COLUMNS), caps


def write_shards(
    config: CurateConfig,
    out: Path,
    staging: Staging,
    index: Path,
    captions_dir: Path,
    duplicates,
    tagger,
    balance: TagBalance,
    rejects: RejectsWriter,
    report: ReportBuilder,
    counts: RunCounts,
    progress: bool,
    before_close: Callable[[], None],
) -> None:
    """Write the kept clips into clip shards, streaming the index part by part (clips already
    in complete shards are skipped); dataset-level rejects go to ``rejects`` and every clip
    of the index to the report. ``before_close`` runs after the last clip, before the writer
    closes: ``dataset.json`` is the last file written, so it means "complete"."""
    writer = ClipShardWriter(
        out,
        producer=PRODUCER,
        config=printable_tree(config.model_dump(mode="json")),
        clips_per_shard=config.output.clips_per_shard,
    )
    existing = writer.existing_keys()
    bar = tqdm(desc="shards", unit="clip", disable=not progress)
    with writer:
        for part, caps in _parts_with_captions(index, captions_dir, config):
            for row in (r for b in part.to_batches(max_chunksize=128) for r in b.to_pylist()):
                key = row["key"]
                source = os.fsdecode(row["source"])
                scores = json.loads(row["scores"])
                v = _verdict(key, duplicates, caps, tagger, config)
                if v.similarity is not None:
                    scores["dedup_similarity"] = v.similarity
                span = (row["start_s"], row["end_s"])
                report.add_clip(
                    source, row["source_id"], key, span, scores, v.stage, v.reason, v.caption
                )
                if not v.kept:
                    rejects.add(reject_row(source, key, v.stage, v.stage, v.reason))
                    continue
                counts.clips_kept += 1
                bar.update(1)
                if key in existing:
                    continue
                mp4 = staging.mp4_path(key)
                if not mp4.is_file():
                    raise RuntimeError(
                        f"staged clip {mp4} is missing; delete {staging.root} and rerun"
                    )
                weight = balance.weight(v.tags) if config.balance.enabled else 1.0
                rec = ClipRecord(
                    key=key,
                    source=printable(source),
                    start_s=row["start_s"],
                    end_s=row["end_s"],
                    fps=row["fps"],
                    num_frames=row["num_frames"],
                    width=row["width"],
                    height=row["height"],
                    scores=scores,
                    caption=printable(v.caption),
                    tags=[printable(t) for t in v.tags],
                    sample_weight=weight,
                    extra={
                        "source_start_frame": row["start_frame"],
                        "source_end_frame": row["end_frame"],
                        "source_fps": row["source_fps"],
                        "decoder": row["decoder"],
                    },
                )
                writer.write(rec, mp4.read_bytes())
        bar.close()
        before_close()


class RejectsWriter:
    """``rejects.parquet`` written as a stream (row groups of 4096) into a partial file,
    moved into place by ``close``; counts rejects per stage."""

    SCHEMA = pa.schema(
        [
            ("source", pa.string()),
            ("key", pa.string()),
            ("stage", pa.string()),
            ("kind", pa.string()),
            ("reason", pa.string()),
        ]
    )

    def __init__(self, partial: Path) -> None:
        refuse_symlink(partial, "output")
        self.partial = partial
        self._writer = pq.ParquetWriter(str(partial), self.SCHEMA)
        self._rows: list[dict[str, Any]] = []
        self.stage_counts: Counter = Counter()

    def add(self, row: dict[str, Any]) -> None:
        # every string as valid UTF-8 (a source name's non-UTF-8 bytes as \xNN escapes)
        self._rows.append({k: printable(v) if isinstance(v, str) else v for k, v in row.items()})
        self.stage_counts[row["stage"]] += 1
        if len(self._rows) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.SCHEMA))
            self._rows = []

    def close(self, final: Path) -> None:
        self._flush()
        self._writer.close()
        with open(self.partial, "rb") as f:
            os.fsync(f.fileno())
        refuse_symlink(final, "output")
        os.replace(self.partial, final)


def write_rejects(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rejects.parquet`` from a list of rows (see :class:`RejectsWriter` for a stream)."""
    w = RejectsWriter(path.with_name(f".{path.name}.partial"))
    for r in rows:
        w.add(r)
    w.close(path)


def read_rejects(out_dir: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(Path(out_dir) / REJECTS).to_pylist()


def rebuild_report(out_dir: str | Path) -> Path:
    """Rewrite ``report.html`` of a finished output directory from its staging and shards."""
    from mugv_data.config import load_config

    out = Path(out_dir)
    if artifact_kind(out) != CLIP_SHARDS_FORMAT or not (out / RESOLVED_CONFIG).is_file():
        raise ValueError(f"{out} is not a finished mugv-data curation output")
    with output_lock(out, "report folder"):
        return _rebuild_report(out, load_config(out / RESOLVED_CONFIG))


def _rebuild_report(out: Path, config: CurateConfig) -> Path:
    staging = Staging(out)
    # dataset-level verdicts (dedup, captions, ...) live in rejects.parquet, not in staging
    late: dict[str, tuple[str, str]] = {}
    if (out / REJECTS).is_file():
        for row in read_rejects(out):
            if row["key"] is not None:
                late[row["key"]] = (row["stage"], row["reason"])
    m = pq.read_table(out / "manifest.parquet", columns=["key", "caption"])
    captions = dict(zip(m.column("key").to_pylist(), m.column("caption").to_pylist()))
    report = ReportBuilder(out, staging, config)
    sources = discover_inputs(config.input.paths, config.input.extensions, exclude=[out])
    for s in sources:
        if not staging.done(source_id(s)):
            continue
        r = staging.load(source_id(s))
        report.add_source(r)
        for c in r.clips:
            stage, reason = c.rejected_stage, c.reason
            if stage is None and c.key not in captions:
                stage, reason = late.get(c.key, ("unknown", "not in the dataset"))
            report.add_clip(
                r.source, r.source_id, c.key, (c.start_s, c.end_s), c.scores, stage, reason,
                captions.get(c.key, "") or "",
            )  # fmt: skip
    return report.write()


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
