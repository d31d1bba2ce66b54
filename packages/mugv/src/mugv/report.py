"""``RUN/report.html``: what each stage of a run did and measured, from the run's files only.

Sections (each a ``<section id=...>``, checked by the headless-browser test): overview
(timings), curate (thumbnails, scores, rejects with reasons), vae (loss curve,
reconstructions beside originals with PSNR, the ``mugv eval vae`` table), training (loss and
validation curves of pre-training per curriculum stage, SFT, DPO; DPO reward margin and
accuracy), generate (T2V and I2V videos), memorise (the memorisation
check), formats (what each hand-off holds). Images and videos are copied into ``RUN/report/``
beside the page; charts are inline SVG. Written atomically.

Every string that comes from the run's files (source file names, captions, prompts, clip keys,
reject reasons, step titles, config values) is HTML-escaped where it is placed, attribute
values included; copied assets get file names of ``[A-Za-z0-9._-]`` only (a hash keeps two
names apart) and are read only from inside the run folder.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
from pathlib import Path

import yaml
from mugv_formats import ClipDataset, atomic_write_text

from mugv.layout import STAGE_NAMES, RunLayout
from mugv.runner import read_marker

PLAIN = (
    "These models are tiny (a VAE with a few channels trained for a few hundred steps, a DiT "
    "of a few layers trained for tens of steps on a handful of clips, on a CPU), so the "
    "generated videos are poor: blurry colour fields, not pictures. The VAE reconstructions and "
    "the memorised clip are recognisable: the VAE is trained on these very frames and the "
    "memorising DiT on one clip. The demo shows that every "
    "stage runs on real data and hands its files to the next, and what each stage measured; "
    "quality comes from the real model sizes, data and GPU hours (see the benchmarks)."
)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:3px 8px;
font-size:13px;text-align:left;vertical-align:top} th{background:#f4f4f4}
.note{background:#fff6d6;border:1px solid #e8d37a;padding:.7em 1em;border-radius:4px}
.grid{display:flex;flex-wrap:wrap;gap:14px} .card{border:1px solid #ddd;padding:6px;
border-radius:4px;font-size:12px;max-width:260px} .card img,.card video{display:block}
.bad{color:#a00} .ok{color:#070} code{background:#f4f4f4;padding:0 3px}
svg{background:#fff;border:1px solid #eee}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def svg_chart(series: dict[str, list[tuple[float, float]]], *, title: str, ylabel: str,
              width: int = 460, height: int = 220) -> str:  # fmt: skip
    """Line chart of ``{name: [(x, y), ...]}`` as inline SVG (no plotting library)."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    pts = [(x, y) for s in series.values() for x, y in s if y == y]
    if not pts:
        return f"<p>{_esc(title)}: no data</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    left, right, top, bottom = 52, 10, 22, 30
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{_esc(title)}" class="chart">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{_esc(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#999"/>',
    ]
    for v in (y0, (y0 + y1) / 2, y1):
        parts.append(
            f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{v:.3g}</text>"
        )
    for v in (x0, x1):
        parts.append(
            f'<text x="{sx(v):.1f}" y="{height - 14}" font-size="10" text-anchor="middle">'
            f"{v:g}</text>"
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 2}" font-size="10" text-anchor="middle">step'
        f'</text><text x="10" y="{top + ph / 2}" font-size="10" transform="rotate(-90 10 '
        f'{top + ph / 2})" text-anchor="middle">{_esc(ylabel)}</text>'
    )
    for i, (name, s) in enumerate(series.items()):
        c = colours[i % len(colours)]
        s = [(x, y) for x, y in s if y == y]
        if not s:
            continue
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{d}"/>')
        parts.append(
            f'<text x="{left + pw - 4}" y="{top + 12 + 12 * i}" font-size="10" fill="{c}" '
            f'text-anchor="end">{_esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def safe_name(name: str) -> str:
    """``name`` (``a/b.mp4``) with each part reduced to ``[A-Za-z0-9._-]``: a part that had to
    change gets a short hash of the original, so two names stay apart; no ``..``, no empty."""
    out = []
    for part in name.split("/"):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", part).lstrip(".")
        if safe != part or not safe:
            stem, dot, ext = safe.rpartition(".")
            tag = hashlib.sha1(part.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            safe = f"{stem}-{tag}.{ext}" if dot and stem else f"{safe}-{tag}"
        out.append(safe)
    return "/".join(out)


class _Assets:
    """Copies files of the run folder ``root`` into the report's asset folder (built as
    ``folder``, renamed to ``RUN/report/`` at the end) and returns their paths relative to
    report.html (safe names: see :func:`safe_name`)."""

    def __init__(self, folder: Path, url: str, root: Path):
        self.folder, self.url, self.root = folder, url, root.resolve()

    def __call__(self, src: Path, name: str | None = None) -> str | None:
        try:
            inside = src.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):
            inside = False
        if not inside or not src.is_file():
            return None
        dst = self.folder / safe_name(name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return f"{self.url}/{dst.relative_to(self.folder).as_posix()}"


def _video(src: str | None, w: int = 192) -> str:
    if src is None:
        return '<p class="bad">missing</p>'
    return (
        f'<video src="{_esc(src)}" width="{w}" height="{w}" autoplay loop muted playsinline '
        f"controls></video>"
    )


def _series(rows: list[dict], keys: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """``{key: [(step, value), ...]}`` of each metric ``key`` over the rows that have it."""
    return {k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}


def _overview(run: RunLayout, stage_names: list[str]) -> str:
    rows, total, cpu_total = [], 0.0, 0.0
    for name in stage_names:
        m = read_marker(run.marker(name))
        if m is None:
            rows.append(f"<tr><td>{_esc(name)}</td><td colspan=4>not finished</td></tr>")
            continue
        total += m["seconds"]
        cpu = m.get("cpu_seconds")  # markers of older runs have none
        cpu_total += cpu or 0.0
        steps = "; ".join(f"{_esc(s['title'])} {s['seconds']:.1f} s" for s in m.get("steps", []))
        rows.append(
            f"<tr><td>{_esc(name)}</td><td>{m['seconds']:.1f} s</td>"
            f"<td>{'' if cpu is None else f'{cpu:.1f} s'}</td><td>{_esc(m['finished'])}"
            f"</td><td>{steps}</td></tr>"
        )
    return (
        f'<p class="note" id="plain">{_esc(PLAIN)}</p>'
        "<table><tr><th>stage</th><th>time</th><th>CPU time</th><th>finished (UTC)</th>"
        "<th>steps</th></tr>"
        + "".join(rows)
        + f"<tr><th>sum</th><th>{total:.1f} s</th><th>{cpu_total:.1f} s</th>"
        "<th colspan=2></th></tr></table>"
        "<p>Stages that do not read each other's files run side by side, so the sum of their "
        "times exceeds the pipeline's wall time (<code>timings.json</code>).</p>"
        "<p>Logs of every stage: <code>logs/STAGE.log</code>; each stage's resolved config is in "
        "its output folder; the pipeline's in <code>resolved_config.yaml</code>.</p>"
    )


def _curate(run: RunLayout, asset: _Assets) -> str:
    clips = run.clips
    data_report = (clips / "report.html").relative_to(run.root).as_posix()  # mugv-data's page
    out = []
    summary = json.loads((clips / "summary.json").read_text())
    out.append(
        f"<p>{_esc(summary['sources'])} source videos, {_esc(summary['clips_seen'])} clips after "
        f"the shot split, <b>{_esc(summary['clips_kept'])} kept</b>. Rejected by stage: "
        + ", ".join(f"{_esc(k)} {_esc(v)}" for k, v in summary.get("rejects_by_stage", {}).items())
        + ". mugv-data's own report: "
        + f'<a href="{_esc(data_report)}">{_esc(data_report)}</a>.</p><div class="grid">'
    )
    shown = ("sharpness", "motion", "brightness", "text_ratio", "border_ratio", "frozen_ratio")
    for r in ClipDataset(clips).records():
        thumb = asset(clips / "report" / "thumbs" / f"{r.key}.jpg", f"thumbs/{r.key}.jpg")
        scores = "".join(
            f"<tr><td>{_esc(k)}</td><td>{r.scores[k]:.3g}</td></tr>" for k in shown if k in r.scores
        )
        img = f'<img src="{_esc(thumb)}" width="240" alt="{_esc(r.key)}">' if thumb else ""
        out.append(
            f'<div class="card kept">{img}<b>{_esc(r.key)}</b> {_esc(Path(r.source).name)} '
            f"{r.start_s:.1f}-{r.end_s:.1f} s<br><i>{_esc(r.caption)}</i>"
            f"<table>{scores}</table></div>"
        )
    out.append("</div><h3>Rejects</h3><table><tr><th></th><th>clip</th><th>source</th>"
               "<th>stage</th><th>reason</th></tr>")  # fmt: skip
    import pyarrow.parquet as pq  # 0.5 s that the other `mugv.tools` commands skip

    rej = clips / "rejects.parquet"
    for row in pq.read_table(rej).to_pylist() if rej.is_file() else []:
        thumb = asset(clips / "report" / "thumbs" / f"{row['key']}.jpg", f"thumbs/{row['key']}.jpg")
        img = f'<img src="{_esc(thumb)}" width="120" alt="{_esc(row["key"])}">' if thumb else ""
        out.append(
            f'<tr class="reject"><td>{img}</td><td>{_esc(row["key"])}</td>'
            f"<td>{_esc(Path(row['source']).name)}</td><td>{_esc(row['stage'])}</td>"
            f"<td>{_esc(row['reason'])}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _vae(run: RunLayout, asset: _Assets) -> str:
    logs = _jsonl(run.vae_train / "metrics.jsonl")
    out = [
        '<div class="grid">',
        svg_chart(_series(logs, ("loss", "mse", "l1")), title="VAE training loss", ylabel="loss"),
        svg_chart(_series(logs, ("psnr",)), title="VAE training PSNR (dB)", ylabel="dB"),
        "</div>",
    ]
    rec_path = run.recon_table
    if rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        mean = sum(c["psnr"] for c in rec["clips"]) / max(1, len(rec["clips"]))
        out.append(
            f"<p>Each clip at {_esc(rec['resolution'])}, encoded (posterior mean) and decoded by "
            f"the trained tiny VAE: mean PSNR <b>{mean:.2f} dB</b>. The demo's VAE is trained "
            "on these very frames (every later stage reads them): the PSNR says how well it "
            "memorised them, not how it does on clips it never saw.</p>"
            "<table><tr><th>clip</th><th>original</th><th>reconstruction</th><th>PSNR</th></tr>"
        )
        for c in rec["clips"]:
            a, b = (asset(run.recon / name, f"recon/{name}") for name in run.recon_pair(c["key"]))
            out.append(
                f"<tr><td>{_esc(c['key'])}<br><i>{_esc(c['caption'])}</i></td>"
                f"<td>{_video(a, 128)}</td><td>{_video(b, 128)}</td>"
                f"<td>{c['psnr']:.2f} dB</td></tr>"
            )
        out.append("</table>")
    out.append(_vae_eval(run))
    return "".join(out)


def dpo_variant(run: RunLayout) -> str:
    """Which DPO ran (``align.dpo_lora``), read from the config the stage wrote: LoRA
    adapters on the frozen SFT export (reference: the adapters off) or every weight (a
    separate frozen reference)."""
    path = run.config("dpo")
    if not path.is_file():
        return "not run"
    lora = (yaml.safe_load(path.read_text()) or {}).get("lora")
    if lora:
        return (
            f"LoRA (rank {lora.get('rank', 16)}, alpha {lora.get('alpha', 16.0)}) on the frozen "
            "SFT export; reference: the SFT export itself, adapters off; exported merged"
        )
    return "full-parameter; reference: a separate frozen copy of the SFT export"


def _vae_eval(run: RunLayout) -> str:
    """The ``mugv eval vae`` table of the demo VAE (recon/eval/vae.json), one row per
    resolution."""
    path = run.recon_eval / "vae.json"
    if not path.is_file():
        return "<p>No <code>mugv eval vae</code> table (vae.eval_resolutions is empty).</p>"
    res = json.loads(path.read_text())
    rows = res.get("resolutions", [])
    metrics = [m for m in ("psnr", "ssim", "lpips") if rows and all(m in r["mean"] for r in rows)]
    out = [
        f'<p id="vae-eval"><code>mugv eval vae</code> of this VAE on the curated clips '
        f"({res['frames']} frames each, {_esc(res['device'])}; per-frame metrics averaged over "
        "frames, then clips; the protocol is in docs/evaluation.md): "
        f"<code>{_esc((run.recon_eval / 'vae.md').relative_to(run.root).as_posix())}</code>.</p>"
        "<table><tr><th>resolution</th><th>clips</th>"
        + "".join(f"<th>{m.upper()}</th>" for m in metrics)
        + "<th>clips/s (encode + decode)</th></tr>"
    ]
    for r in rows:
        h, w = r["size"]
        cps = r.get("clips_per_second")
        out.append(
            f"<tr><td>{_esc(r['resolution'])} ({h}x{w})</td><td>{len(r['clips'])}</td>"
            + "".join(f"<td>{r['mean'][m]:.4f}</td>" for m in metrics)
            + f"<td>{'-' if not cps else f'{cps:.3g}'}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _validation_by_stage(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """``{curriculum stage: [(step, validation loss), ...]}`` of a DiT run's metrics rows: a
    validation row (``{"step", "validation": {"loss", ...}}``) belongs to the stage of the
    training row of its step (the last step before it ran)."""
    stage_of = {r["step"]: str(r["stage"]) for r in rows if "loss" in r and "stage" in r}
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        v = r.get("validation")
        if isinstance(v, dict) and "loss" in v:
            step = r["step"]
            stage = stage_of.get(step) or next(
                (stage_of[s] for s in sorted(stage_of, reverse=True) if s <= step), "train"
            )
            out.setdefault(stage, []).append((v.get("steps_done", step + 1), v["loss"]))
    return out


def _training(run: RunLayout) -> str:
    out = ['<div class="grid">']
    dit = _jsonl(run.dit / "metrics.jsonl")
    by_stage: dict[str, list] = {}
    for r in dit:
        if "loss" in r:
            by_stage.setdefault(str(r.get("stage", "train")), []).append((r["step"], r["loss"]))
    out.append(svg_chart(by_stage, title="DiT pre-training loss (per curriculum stage)",
                         ylabel="flow loss"))  # fmt: skip
    val = _validation_by_stage(dit)
    if val:
        out.append(svg_chart(val, title="DiT validation loss (per curriculum stage)",
                             ylabel="flow loss, fixed noise"))  # fmt: skip
    sft = _jsonl(run.sft / "metrics.jsonl")
    dpo = _jsonl(run.dpo / "metrics.jsonl")
    kto = _jsonl(run.kto / "metrics.jsonl")
    charts = [
        ({"sft": _series(sft, ("loss",))["loss"]}, "SFT loss", "flow loss"),
        (_series(dpo, ("loss", "pref_loss", "sft_loss")), "DPO losses", "loss"),
        (_series(dpo, ("reward_margin", "pref_accuracy")), "DPO reward margin and accuracy",
         "value"),
        (_series(kto, ("reward_margin", "pref_accuracy", "pref_loss")),
         "KTO reward margin, accuracy and loss", "value"),
    ]  # fmt: skip
    out += [svg_chart(series, title=title, ylabel=ylabel) for series, title, ylabel in charts]
    out.append("</div>")
    if val:
        last = {stage: pts[-1][1] for stage, pts in val.items()}
        out.append(
            '<p id="dit-validation">DiT validation: the flow loss at fixed noise and fixed noise '
            "levels (mugv-dit <code>validation</code>) over the demo's own latent clips (a "
            "four-clip demo holds none out), after each stage: "
            + ", ".join(f"{_esc(k)} <b>{v:.4f}</b>" for k, v in last.items())
            + ".</p>"
        )
    if dpo:
        last = dpo[-1]
        n = min(5, len(dpo))
        acc = sum(r.get("pref_accuracy", 0.0) for r in dpo[-n:]) / n
        margin = sum(r.get("reward_margin", 0.0) for r in dpo[-n:]) / n
        out.append(
            f'<p id="dpo-metrics">Flow-DPO on automatic pairs (each real clip beats the '
            f"pre-trained DiT's own sample of its caption): after {last['step'] + 1} steps, "
            f"reward margin <b>{margin:.4g}</b> and preference accuracy <b>{acc:.2f}</b> "
            f"(means of the last {n} steps; first step: margin "
            f"{dpo[0].get('reward_margin', float('nan')):.4g}, accuracy "
            f"{dpo[0].get('pref_accuracy', float('nan')):.2f}). Variant: "
            f"<b>{_esc(dpo_variant(run))}</b>.</p>"
        )
    if kto:
        n = min(5, len(kto))
        acc = sum(r.get("pref_accuracy", 0.0) for r in kto[-n:]) / n
        out.append(
            f'<p id="kto-metrics">Flow-KTO on automatic labels (real clips pass, the DiT\'s '
            f"samples fail): after {kto[-1]['step'] + 1} steps, accuracy <b>{acc:.2f}</b> "
            f"(mean of the last {n} steps; first step {kto[0].get('pref_accuracy', 0.0):.2f}).</p>"
        )
    return "".join(out)


def _generate(run: RunLayout, asset: _Assets) -> str:
    vids = run.videos
    prompts = json.loads(run.prompts.read_text()) if run.prompts.is_file() else []
    t2v = [run.t2v] if run.t2v.is_file() else sorted(vids.glob("t2v_*.mp4"))
    out = ['<h3>Text to video</h3><div class="grid">']
    for i, p in enumerate(t2v):
        src = asset(p, f"videos/t2v_{i}.mp4")
        cap = prompts[i] if i < len(prompts) else ""
        out.append(f'<div class="card">{_video(src)}<i>{_esc(cap)}</i></div>')
    out.append('</div><h3>Image to video</h3><div class="grid">')
    img = asset(run.i2v_first_frame, "videos/i2v_first_frame.png")
    i2v = [run.i2v] if run.i2v.is_file() else sorted(vids.glob("i2v_*.mp4"))
    if img:
        out.append(f'<div class="card"><img src="{_esc(img)}" width="192" alt="first frame">'
                   "first frame (from a curated clip)</div>")  # fmt: skip
    for i, p in enumerate(i2v):
        src = asset(p, f"videos/i2v_{i}.mp4")
        out.append(
            f'<div class="card">{_video(src)}<i>{_esc(prompts[0] if prompts else "")}</i></div>'
        )
    out.append("</div>")
    return "".join(out)


def _memorise(run: RunLayout, asset: _Assets) -> str:
    if not run.memorise_result.is_file():
        return "<p>Not run (memorise.enabled=false).</p>"
    res = json.loads(run.memorise_result.read_text())
    a, b, c = (
        asset(p, f"memorise/{p.name}")
        for p in (run.memorise_target, run.memorise_regenerated, run.memorise_untrained_video)
    )
    ok = res["trained_rel_error"] < 0.5 * res["untrained_rel_error"]
    other = res.get("mse_to_nearest_other")
    nearest = (
        "no other clip to compare with"
        if other is None
        else f"to the nearest other clip's {other:.2e}"
    )
    return (
        f"<p>A small DiT trained by mugv-dit for {_esc(res['steps'])} CPU steps on one clip's "
        f"latents (<code>{_esc(res['clip'])}</code>, caption <i>{_esc(res['caption'])}</i>) "
        f"regenerates them through mugv-infer's sampler ({_esc(res['sample_steps'])} steps, no CFG). "
        f"Relative latent error <b>{res['trained_rel_error']:.3f}</b> against "
        f"<b>{res['untrained_rel_error']:.3f}</b> for the untrained model "
        f'<span class="{"ok" if ok else "bad"}">({"passes" if ok else "fails"})</span>. '
        f"Decoded frames: MSE to this clip's VAE reconstruction {res['mse_to_target']:.2e}, "
        f"{nearest}.</p>"
        "<table><tr><th>VAE reconstruction of the clip</th><th>regenerated (trained)</th>"
        f"<th>untrained model</th></tr><tr><td>{_video(a, 160)}</td><td>{_video(b, 160)}</td>"
        f"<td>{_video(c, 160)}</td></tr></table>"
    )


def _formats(run: RunLayout) -> str:
    rows = []
    for p in (run.clips, run.latents, run.latents_text, run.vae, run.dit_export, run.samples,
              run.rdpo_prefs, run.sft_export, run.dpo_export, run.kto_prefs, run.kto_export):  # fmt: skip
        name = p.relative_to(run.root).as_posix()
        if not p.exists():
            continue
        meta = None
        for f in ("dataset.json", "config.json", "header.json"):
            if (p / f).is_file():
                try:
                    meta = json.loads((p / f).read_text())
                except json.JSONDecodeError:
                    meta = None
                break
        fmt = (meta or {}).get("format", "")
        ver = (meta or {}).get("format_version", (meta or {}).get("version", ""))
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        rows.append(
            f"<tr><td><code>{_esc(name)}/</code></td><td>{_esc(fmt)}</td><td>{_esc(ver)}</td>"
            f"<td>{size / 1e6:.2f} MB</td></tr>"
        )
    return (
        "<p>Stages meet only through these folders (run <code>mugv-formats inspect PATH</code> "
        "on any of them):</p><table><tr><th>hand-off</th><th>format</th><th>version</th>"
        "<th>size</th></tr>" + "".join(rows) + "</table>"
    )


def write_report(run: RunLayout) -> Path:
    tmp_assets = run.report_partial  # the runner cleared it and report/ (mugv.ownership)
    asset = _Assets(tmp_assets, run.report_assets.relative_to(run.root).as_posix(), run.root)
    sections = [
        ("overview", "What ran", _overview(run, [s for s in STAGE_NAMES if s != "report"])),
        ("curate", "1. Curation (mugv-data)", _curate(run, asset)),
        ("vae", "2. Tiny VAE (mugv-vae)", _vae(run, asset)),
        (
            "training",
            "3. DiT pre-training, SFT, Flow-DPO and Flow-KTO (mugv-dit, mugv-align)",
            _training(run),
        ),
        ("generate", "4. Generated videos (mugv-infer)", _generate(run, asset)),
        (
            "memorise",
            "5. Memorisation check (the chain is right end to end)",
            _memorise(run, asset),
        ),
        ("formats", "6. Hand-offs", _formats(run)),
    ]
    body = "".join(f'<section id="{sid}"><h2>{_esc(t)}</h2>{h}</section>' for sid, t, h in sections)
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>mugv demo report</title>"
        f"<style>{CSS}</style></head><body><h1>mugv demo report</h1>"
        f"<p>Run folder <code>{_esc(run.root)}</code>. The pipeline: curate &rarr; VAE &rarr; "
        "latents &rarr; DiT &rarr; samples/pairs &rarr; SFT &rarr; DPO &rarr; generate.</p>"
        f"{body}</body></html>"
    )
    tmp_assets.mkdir(parents=True, exist_ok=True)
    tmp_assets.rename(run.report_assets)
    atomic_write_text(run.report, page)
    print(f"wrote {run.report}")
    return run.report
