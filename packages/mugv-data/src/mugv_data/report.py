"""HTML report: counts per stage, a histogram of every score (inline SVG, kept vs rejected),
and thumbnails of kept and rejected clips with their scores and reasons.

Every value put into the page goes through :func:`esc` (HTML-escaped, quotes too, and valid
UTF-8): file names, keys, captions, tags, reasons, decoder messages and config values are
user-controlled, so none of them can open a tag or an attribute.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import numpy as np
from mugv_formats import atomic_write_bytes, atomic_write_text
from mugv_formats.atomic import refuse_symlink

from mugv_data.config import CurateConfig
from mugv_data.inputs import printable
from mugv_data.staging import own_dir

REPORT = "report.html"
REPORT_DIR = "report"


def esc(value: object) -> str:
    """``value`` as HTML text or attribute content: ``str()``, non-UTF-8 file-name bytes as
    ``\\xNN``, then ``& < > " '`` escaped."""
    return html.escape(printable(str(value)), quote=True)


def histogram_svg(
    name: str,
    kept: list[float],
    rejected: list[float],
    bins: int = 20,
    bounds: tuple[float | None, float | None] = (None, None),
) -> str:
    """A small stacked histogram (kept green, rejected red) with threshold lines."""
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
    for b in bounds:
        if b is not None and lo <= b <= hi:
            x = pad + (b - lo) / (hi - lo) * (w - 2 * pad)
            parts.append(
                f"<line x1='{x:.1f}' x2='{x:.1f}' y1='18' y2='{h - pad}' stroke='#00f' stroke-dasharray='3'/>"
            )
    parts.append(f"<text x='{pad}' y='{h - 6}' font-size='10'>{lo:.4g}</text>")
    parts.append(
        f"<text x='{w - pad}' y='{h - 6}' font-size='10' text-anchor='end'>{hi:.4g}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _bounds(config: CurateConfig, score: str) -> tuple[float | None, float | None]:
    f = config.filters
    table = {
        "sharpness": f.sharpness,
        "motion": f.motion,
        "border_ratio": f.borders,
        "static_diff": f.static,
        "brightness": f.brightness,
        "text_ratio": f.text,
        "aesthetic": f.aesthetic,
    }
    c = table.get(score)
    return (c.min, c.max) if c is not None else (None, None)


def write_report(out: Path, results, kept, staging, config: CurateConfig) -> Path:
    """Write ``report.html`` (+ ``report/thumbs``) into ``out``; returns its path."""
    thumbs_dir = own_dir(out, REPORT_DIR, "thumbs")
    kept_keys = {k.clip.key for k in kept}
    captions = {k.clip.key: k.caption for k in kept}
    all_clips = [(r, c) for r in results for c in r.clips]
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for _, c in all_clips:
        for name, v in c.scores.items():
            scores.setdefault(name, ([], []))[0 if c.key in kept_keys else 1].append(v)
    stage_counts = Counter(c.rejected_stage for _, c in all_clips if c.key not in kept_keys)
    file_rejects = [r for r in results if r.reject_stage is not None]
    n_thumbs = config.output.report_thumbnails

    def card(r, c) -> str:
        src = staging.thumb_path(c.key)
        img = ""
        if src.is_file():
            refuse_symlink(src, "staged thumbnail")
            atomic_write_bytes(thumbs_dir / src.name, src.read_bytes())
            img = f"<img src='{esc(REPORT_DIR)}/thumbs/{esc(src.name)}' height='96'>"
        sc = " ".join(
            f"{k}={v:.3g}" for k, v in sorted(c.scores.items()) if not k.startswith("motion_")
        )
        why = "" if c.key in kept_keys else f"<br><b>{esc(c.rejected_stage)}</b>: {esc(c.reason)}"
        cap = captions.get(c.key, "")
        cap = f"<br><i>{esc(cap[:160])}</i>" if cap else ""
        return (
            f"<div class='card'>{img}<br><code>{esc(c.key)}</code> {esc(Path(r.source).name)} "
            f"[{c.start_s:.2f}-{c.end_s:.2f}s]<br><small>{esc(sc)}{why}{cap}</small></div>"
        )

    kept_cards = [card(r, c) for r, c in all_clips if c.key in kept_keys][:n_thumbs]
    rej_cards = [card(r, c) for r, c in all_clips if c.key not in kept_keys][:n_thumbs]
    hists = "".join(
        histogram_svg(n, k, rj, bounds=_bounds(config, n)) for n, (k, rj) in sorted(scores.items())
    )
    rows = "".join(
        f"<tr><td>{esc(s)}</td><td>{n}</td></tr>" for s, n in sorted(stage_counts.items(), key=str)
    )
    srows = "".join(
        f"<tr><td>{esc(Path(r.source).name)}</td><td>{esc(r.decoder)}</td>"
        f"<td>{esc(r.fallback_reason or '')}</td>"
        f"<td>{esc((r.probe or {}).get('duration_s', ''))}</td><td>{len(r.clips)}</td>"
        f"<td>{sum(c.key in kept_keys for c in r.clips)}</td></tr>"
        for r in results
        if r.reject_stage is None
    )
    frows = "".join(
        f"<tr><td>{esc(Path(r.source).name)}</td><td>{esc(r.reject_kind)}</td>"
        f"<td>{esc(r.reject_detail)}</td></tr>"
        for r in file_rejects
    )
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>mugv-data report</title>
<style>body{{font-family:sans-serif;margin:16px}} .card{{display:inline-block;width:240px;vertical-align:top;margin:4px;font-size:12px}}
svg{{margin:4px;border:1px solid #ddd}} table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>
<h1>mugv-data curation report</h1>
<p>{len(results)} sources ({len(file_rejects)} rejected), {len(all_clips)} candidate clips, <b>{len(kept_keys)} kept</b>.</p>
<h2>Rejected clips per stage</h2><table>{rows}</table>
<h2>Sources</h2><table><tr><td>source</td><td>decoder</td><td>fallback reason</td><td>seconds</td><td>clips</td><td>kept</td></tr>{srows}</table>
<h2>Rejected files</h2><table>{frows}</table>
<h2>Scores</h2><p>green: kept, red: rejected, dashed: thresholds</p>{hists}
<h2>Kept clips</h2>{"".join(kept_cards)}
<h2>Rejected clips</h2>{"".join(rej_cards)}
</body></html>"""
    path = out / REPORT
    atomic_write_text(path, page)
    return path
