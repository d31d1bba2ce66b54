"""Render benchmark JSON files (from train_step.py) into one markdown table.

python render.py --out docs/benchmarks/dit/README.md --title "..." --command "..." a.json b.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="MUG-DiT training-step benchmark")
    parser.add_argument("--notes", default="")
    args = parser.parse_args()
    lines = [f"# {args.title}", ""]
    if args.notes:
        lines += [args.notes, ""]
    for path in args.inputs:
        data = json.loads(Path(path).read_text())
        meta = data["meta"]
        lines += [
            f"## {Path(path).name}: {meta.get('label', '')}",
            "",
            f"device: {meta['device']}, torch {meta['torch']}; command: `{' '.join(meta['argv'])}`",
            "",
            "| impl | case | heads | tokens/sample | TP | SP | DP | recompute | step s | model TFLOP/s/GPU | tokens/s/GPU | peak GiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in data["rows"]:
            if "error" in r:
                lines.append(f"| {r['impl']} | {r['case']} | {r['error']} |")
                continue
            lines.append(
                f"| {r['impl']} | {r['case']} | {r['heads']} | {r['tokens_per_sample']} | {r['tp']} "
                f"| {'yes' if r.get('sequence_parallel') else 'no'} "
                f"| {r['dp']} | {r['recompute']} | {r['step_s']:.3f} | {r['tflops_per_gpu']:.0f} "
                f"| {r['tokens_per_s_per_gpu']:.0f} | {r['peak_mem_gib']:.1f} |"
            )
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
