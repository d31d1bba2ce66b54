"""HTML report: counts per stage, a histogram of every score (inline SVG, kept vs rejected)
with its thresholds, the per-source threshold overrides (``filters.per_source``) with the
clips they judged, and thumbnails of kept and rejected clips with their scores, reasons and
the overrides that judged them.

Every value put into the page goes through :func:`esc` (HTML-escaped, quotes too, and valid
UTF-8): file names, keys, captions, tags, reasons, decoder messages and config values are
user-controlled, so none of them can open a tag or an attribute.
"""

from __future__ import annotations

import html
import json
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
from mugv_formats import atomic_write_bytes, atomic_write_text
from mugv_formats.atomic import refuse_symlink

from mugv_data.config import CurateConfig, FiltersConfig
from mugv_data.inputs import printable
from mugv_data.staging import own_dir

REPORT = "report.html"
REPORT_DIR = "report"

Bounds = tuple[float | None, float | None]

#: Colours of the threshold lines: the run's (global) thresholds, per-source overrides'.
RUN_LINE, OVERRIDE_LINE = "#00f", "#e70"


def esc(value: object) -> str:
    """``value`` as HTML text or attribute content: ``str()``, non-UTF-8 file-name bytes as
    ``\\xNN``, then ``& < > " '`` escaped."""
    return html.escape(printable(str(value)), quote=True)


def histogram_svg(
    name: str,
    kept: list[float],
    rejected: list[float],
    bins: int = 20,
    bounds: Bounds = (None, None),
    overrides: list[tuple[str, Bounds]] | tuple = (),
) -> str:
    """A small stacked histogram (kept green, rejected red) with threshold lines: the run's
    ``bounds`` blue, short-dashed; each ``(label, bounds)`` of ``overrides`` (the thresholds
    of per-source overrides) orange, long-dashed, with its label above the line. A threshold
    outside the scores' range is not drawn (the report's caption gives every value)."""
    vals = np.asarray(kept + rejected, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    w, h, pad = 320, 140, 24
    if len(vals) == 0:
        return (
            f"<svg width='{w}' height='{h}'><text x='10' y='20'>{esc(name)}: no data</text></svg>"
        )
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    hk, _ = np.histogram(np.asarray(kept, np.float64), edges)
    hr, _ = np.histogram(np.asarray(rejected, np.float64), edges)
    top = max(1, int((hk + hr).max()))
    bw = (w - 2 * pad) / bins
    parts = [
        f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>",
        f"<text x='{pad}' y='14' font-size='12'>{esc(name)} (n={len(vals)})</text>",
    ]
    for i in range(bins):
        x = pad + i * bw
        yk = (h - pad) - (h - 2 * pad - 10) * hk[i] / top
        yr = yk - (h - 2 * pad - 10) * hr[i] / top
        parts.append(
            f"<rect x='{x:.1f}' y='{yk:.1f}' width='{bw - 1:.1f}' height='{(h - pad) - yk:.1f}' fill='#4a4'/>"
        )
        parts.append(
            f"<rect x='{x:.1f}' y='{yr:.1f}' width='{bw - 1:.1f}' height='{yk - yr:.1f}' fill='#c44'/>"
        )
    lines = [(None, b, RUN_LINE, "3") for b in bounds]
    lines += [(label, b, OVERRIDE_LINE, "6 3") for label, bs in overrides for b in bs]
    for label, b, colour, dash in lines:
        if b is not None and lo <= b <= hi:
            x = pad + (b - lo) / (hi - lo) * (w - 2 * pad)
            parts.append(
                f"<line x1='{x:.1f}' x2='{x:.1f}' y1='18' y2='{h - pad}' stroke='{colour}' "
                f"stroke-dasharray='{dash}'/>"
            )
            if label is not None:
                parts.append(
                    f"<text x='{x + 2:.1f}' y='26' font-size='9' fill='{colour}'>{esc(label)}</text>"
                )
    parts.append(f"<text x='{pad}' y='{h - 6}' font-size='10'>{lo:.4g}</text>")
    parts.append(
        f"<text x='{w - pad}' y='{h - 6}' font-size='10' text-anchor='end'>{hi:.4g}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _bounds(f: FiltersConfig, score: str) -> Bounds:
    """The thresholds of a score under filter settings ``f`` (the run's, or a source's with
    its ``filters.per_source`` overrides applied): (min, max), None where there is none."""
    ranges = {
        "sharpness": f.sharpness,
        "motion": f.motion,
        "border_ratio": f.borders,
        "static_diff": f.static,
        "brightness": f.brightness,
        "text_ratio": f.text,
        "aesthetic": f.aesthetic,
        "shake": f.shake,
        "speed_change": f.speed,
    }
    if score in ranges:
        return ranges[score].min, ranges[score].max
    every = f.sharpness.rule == "every"
    other: dict[str, Bounds] = {
        "sharpness_lo": (f.sharpness.min if every else None, None),
        "sharpness_hi": (None, f.sharpness.max if every else None),
        "frozen_ratio": (None, f.static.max_frozen_ratio),
        "diff_spike": (None, f.speed.max_diff_spike),
        "classifier_score": (None, f.classifier.threshold),
    }
    return other.get(score, (None, None))


def _threshold_text(b: Bounds) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in zip(("min", "max"), b) if v is not None) or "none"


def _flat(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """``{"sharpness": {"min": 1}}`` -> ``[("sharpness.min", 1)]``."""
    out: list[tuple[str, object]] = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


#: Rows of the sources and rejected-files tables (a corpus report names the first ones).
MAX_TABLE_ROWS = 1000


class ReportBuilder:
    """Collects what the report shows while the curation streams its clips, in memory flat in
    the number of clips but for one number per score per clip (the histograms): at most
    ``output.report_thumbnails`` cards each of kept and rejected clips and
    :data:`MAX_TABLE_ROWS` rows per table are kept.

    ``add_source`` each source (in order), ``add_clip`` each candidate clip once with its
    final verdict, then ``write``.

    Per-source overrides (``filters.per_source``) are numbered #1, #2, ... in their config
    order; a source matching several globs is judged by all of them (label ``#1+#2``). The
    report lists each glob with its settings and the sources and clips it judged, draws each
    set of matching globs' thresholds on the histograms where they differ from the run's, and
    names the globs on the cards of the clips they judged."""

    def __init__(self, out: Path, staging, config: CurateConfig) -> None:
        self.out = out
        self.staging = staging
        self.config = config
        self.thumbs_dir = own_dir(out, REPORT_DIR, "thumbs")
        self.n_thumbs = config.output.report_thumbnails
        self.scores: dict[str, tuple[array, array]] = {}
        self.stage_counts: Counter = Counter()
        self.sources = 0
        self.file_rejects = 0
        self.clips = 0
        self.kept = 0
        self.kept_cards: list[str] = []
        self.rej_cards: list[str] = []
        self._src_rows: dict[str, list] = {}  # source id -> row (first MAX_TABLE_ROWS)
        self._file_rows: list[str] = []
        self.filters = config.filters
        self.globs = list(config.filters.per_source)
        self._glob_counts = {g: [0, 0, 0] for g in self.globs}  # sources, clips, rejected
        self._combos: dict[tuple[str, ...], FiltersConfig] = {}  # matching globs -> settings
        self._last: tuple[str, tuple[str, ...]] = ("", ())  # source -> its globs, cached

    def globs_of(self, source: str) -> tuple[str, ...]:
        """The ``filters.per_source`` globs that judged a source's clips."""
        if self.globs and self._last[0] != source:
            self._last = (source, self.filters.globs_for(source))
        return self._last[1] if self.globs else ()

    def label(self, globs: tuple[str, ...]) -> str:
        return "+".join(f"#{self.globs.index(g) + 1}" for g in globs)

    def add_source(self, r) -> None:
        """One source's result (a ``SourceResult``): its row in the sources or files table."""
        self.sources += 1
        for g in self.globs_of(r.source):
            self._glob_counts[g][0] += 1
        if r.reject_stage is not None:
            self.file_rejects += 1
            if len(self._file_rows) < MAX_TABLE_ROWS:
                self._file_rows.append(
                    f"<tr><td>{esc(Path(r.source).name)}</td><td>{esc(r.reject_kind)}</td>"
                    f"<td>{esc(r.reject_detail)}</td></tr>"
                )
        elif len(self._src_rows) < MAX_TABLE_ROWS:
            self._src_rows[r.source_id] = [
                Path(r.source).name,
                r.decoder,
                r.fallback_reason or "",
                (r.probe or {}).get("duration_s", ""),
                len(r.clips),
                0,
            ]

    def add_clip(
        self,
        source: str,
        source_id: str,
        key: str,
        span: tuple[float, float],
        scores: dict[str, float],
        stage: str | None,
        reason: str | None,
        caption: str = "",
    ) -> None:
        """One candidate clip with its final verdict (``stage`` None: kept)."""
        kept = stage is None
        self.clips += 1
        globs = self.globs_of(source)
        if globs and globs not in self._combos:
            self._combos[globs] = self.filters.for_globs(globs)
        for g in globs:
            self._glob_counts[g][1] += 1
            self._glob_counts[g][2] += not kept
        for name, v in scores.items():
            if name not in self.scores:
                self.scores[name] = (array("d"), array("d"))
            self.scores[name][0 if kept else 1].append(v)
        if kept:
            self.kept += 1
            if source_id in self._src_rows:
                self._src_rows[source_id][5] += 1
        else:
            self.stage_counts[stage] += 1
        cards = self.kept_cards if kept else self.rej_cards
        if len(cards) < self.n_thumbs:
            cards.append(self._card(source, key, span, scores, stage, reason, caption, globs))

    def _card(self, source, key, span, scores, stage, reason, caption, globs) -> str:
        src = self.staging.thumb_path(key)
        img = ""
        if src.is_file():
            refuse_symlink(src, "staged thumbnail")
            atomic_write_bytes(self.thumbs_dir / src.name, src.read_bytes())
            img = f"<img src='{esc(REPORT_DIR)}/thumbs/{esc(src.name)}' height='96'>"
        sc = " ".join(
            f"{k}={v:.3g}" for k, v in sorted(scores.items()) if not k.startswith("motion_")
        )
        why = "" if stage is None else f"<br><b>{esc(stage)}</b>: {esc(reason)}"
        cap = f"<br><i>{esc(caption[:160])}</i>" if caption else ""
        by = ""
        if globs:
            named = ", ".join(repr(g) for g in globs)
            by = f"<br><span class='ovr'>thresholds of per_source {esc(self.label(globs))} {esc(named)}</span>"
        return (
            f"<div class='card'>{img}<br><code>{esc(key)}</code> {esc(Path(source).name)} "
            f"[{span[0]:.2f}-{span[1]:.2f}s]<br><small>{esc(sc)}{why}{by}{cap}</small></div>"
        )

    def _histograms(self) -> str:
        figs = []
        for n, (k, rj) in sorted(self.scores.items()):
            run = _bounds(self.filters, n)
            over = [
                (self.label(g), b) for g, f in self._combos.items() if (b := _bounds(f, n)) != run
            ]
            text = f"thresholds: run {_threshold_text(run)}" + "".join(
                f"; {label} {_threshold_text(b)}" for label, b in over
            )
            svg = histogram_svg(n, list(k), list(rj), bounds=run, overrides=over)
            figs.append(f"<figure>{svg}<figcaption>{esc(text)}</figcaption></figure>")
        return "".join(figs)

    def _overrides_table(self) -> str:
        if not self.globs:
            return "<p>none: every clip was judged by the run's thresholds.</p>"
        rows = []
        for i, g in enumerate(self.globs, 1):
            settings = "<br>".join(
                f"{esc(k)} = {esc(json.dumps(v))}" for k, v in _flat(self.filters.per_source[g])
            )
            n_src, n_clips, n_rej = self._glob_counts[g]
            rows.append(
                f"<tr><td>#{i}</td><td><code>{esc(g)}</code></td><td>{settings}</td>"
                f"<td>{n_src}</td><td>{n_clips}</td><td>{n_rej}</td></tr>"
            )
        return (
            "<p>A source whose absolute path matches a glob is judged with its settings (every "
            "matching glob, in this order); the others with the run's. Orange long-dashed lines "
            "in the histograms.</p><table><tr><td>#</td><td>glob</td><td>settings</td>"
            "<td>sources</td><td>clips judged</td><td>rejected (any stage)</td></tr>"
            + "".join(rows)
            + "</table>"
        )

    def write(self) -> Path:
        """Write ``report.html`` (+ ``report/thumbs``) into the output; returns its path."""
        rows = "".join(
            f"<tr><td>{esc(s)}</td><td>{n}</td></tr>"
            for s, n in sorted(self.stage_counts.items(), key=str)
        )
        srows = "".join(
            "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
            for row in self._src_rows.values()
        )
        more = self.sources - self.file_rejects - len(self._src_rows)
        if more > 0:
            srows += f"<tr><td colspan='6'>... and {more} more sources</td></tr>"
        frows = "".join(self._file_rows)
        if self.file_rejects > len(self._file_rows):
            frows += (
                f"<tr><td colspan='3'>... and {self.file_rejects - len(self._file_rows)} "
                "more</td></tr>"
            )
        page = f"""<!doctype html><html><head><meta charset='utf-8'><title>mugv-data report</title>
<style>body{{font-family:sans-serif;margin:16px}} .card{{display:inline-block;width:240px;vertical-align:top;margin:4px;font-size:12px}}
svg{{border:1px solid #ddd}} figure{{display:inline-block;vertical-align:top;margin:4px;width:322px}}
figcaption{{font-size:11px}} .ovr{{color:{OVERRIDE_LINE}}} table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>
<h1>mugv-data curation report</h1>
<p>{self.sources} sources ({self.file_rejects} rejected), {self.clips} candidate clips, <b>{self.kept} kept</b>.</p>
<h2>Rejected clips per stage</h2><table>{rows}</table>
<h2>Sources</h2><table><tr><td>source</td><td>decoder</td><td>fallback reason</td><td>seconds</td><td>clips</td><td>kept</td></tr>{srows}</table>
<h2>Rejected files</h2><table>{frows}</table>
<h2>Per-source threshold overrides</h2>{self._overrides_table()}
<h2>Scores</h2><p>green: kept, red: rejected; dashed: the run's thresholds (blue), per-source overrides' (orange, labelled)</p>{self._histograms()}
<h2>Kept clips</h2>{"".join(self.kept_cards)}
<h2>Rejected clips</h2>{"".join(self.rej_cards)}
</body></html>"""
        path = self.out / REPORT
        atomic_write_text(path, page)
        return path
