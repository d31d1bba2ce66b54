"""Turn a training run's ``metrics.jsonl`` into a PSNR-over-steps SVG and a Markdown table.

Dependency-free (writes SVG by hand).

    python packages/mugv-vae/benchmarks/plot_curve.py RUN/metrics.jsonl --out docs/benchmarks/vae/train_curve
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _polyline(points, x0, x1, y0, y1, width, height, pad):
    def sx(x):
        return pad + (x - x0) / max(x1 - x0, 1e-9) * (width - 2 * pad)

    def sy(y):
        return height - pad - (y - y0) / max(y1 - y0, 1e-9) * (height - 2 * pad)

    return " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("metrics")
    ap.add_argument("--out", required=True, help="output prefix (.svg and .md are added)")
    ap.add_argument("--title", default="mugv VAE (mugv preset, random init): PSNR over steps")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.metrics).read_text().splitlines() if line]
    train = [(r["step"], r["psnr"]) for r in rows if "psnr" in r]
    held = [(r["step"], r["eval_psnr"]) for r in rows if "eval_psnr" in r]
    # Smooth the noisy per-batch training PSNR with a running mean over 5 logged points.
    smooth = [
        (s, sum(p for _, p in train[max(0, i - 4) : i + 1]) / len(train[max(0, i - 4) : i + 1]))
        for i, (s, _) in enumerate(train)
    ]
    pts = smooth + held
    x0, x1 = 0, max(s for s, _ in pts)
    y0, y1 = min(p for _, p in pts) - 1, max(p for _, p in pts) + 1
    w, h, pad = 640, 360, 40
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{pad}" y="20">{args.title}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<text x="{w - pad - 60}" y="{h - 10}">step ({x1})</text>',
        f'<text x="5" y="{pad - 5}">PSNR dB ({y0:.1f}..{y1:.1f})</text>',
    ]
    for series, color, label, dy in (
        (smooth, "#1f77b4", "train batch (smoothed)", 0),
        (held, "#d62728", "held-out clips (EMA)", 16),
    ):
        if series:
            svg.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{_polyline(series, x0, x1, y0, y1, w, h, pad)}"/>'
            )
            svg.append(f'<text x="{w - 220}" y="{pad + 10 + dy}" fill="{color}">{label}</text>')
    svg.append("</svg>")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".svg").write_text("\n".join(svg))
    table = [
        "| step | held-out PSNR (dB, EMA weights) | train-batch PSNR (dB, smoothed) |",
        "|---|---|---|",
    ]
    smooth_at = dict(smooth)
    for s, p in held:
        near = min(smooth_at, key=lambda k: abs(k - s)) if smooth_at else None
        table.append(
            f"| {s} | {p:.2f} | {smooth_at[near]:.2f} |"
            if near is not None
            else f"| {s} | {p:.2f} | |"
        )
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
