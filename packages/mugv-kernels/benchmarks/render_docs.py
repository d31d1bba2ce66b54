"""Render the committed benchmark page from the JSON files a GPU run wrote.

Usage: ``python render_docs.py RESULTS_DIR docs/benchmarks/kernels [--previous OLD.json]``:
copies ``kernels.json`` and writes ``README.md`` with the device, date, command, copy ceiling,
the main table, the launch sweep, the tuning run (``tune*.json`` in the docs folder), a pointer
to the removed attention kernels' notes and, with ``--previous``, the table of an earlier run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

GOAL_COPY, GOAL_COMPILE = 0.85, 1.3
NOMINAL_COPY_GBPS = 2970.0  # the H100 copy figure, for a second, stricter column


def _fmt(v, digits=3):
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


def main_table(data: dict) -> list[str]:
    ceiling = data["copy_ceiling"]["GBps"]
    groups: dict = {}
    for r in data["rows"]:
        groups.setdefault((r["kernel"], r["shape"]), {})[r["impl"]] = r
    lines = [
        "| kernel | shape | pass | triton ms | GB/s | % of measured copy | % of 2.97 TB/s "
        "| eager ms | compile ms | vs eager | vs compile | goals (85% / 1.3x) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for (kernel, shape), impls in groups.items():
        for mode in ("fwd", "fwd_bwd"):
            t, e, c = (impls.get(i, {}) for i in ("triton", "eager", "compile"))
            tm, em, cm = (x.get(f"{mode}_ms") for x in (t, e, c))
            gbps = t.get(f"{mode}_GBps")
            frac = gbps / ceiling if gbps else None
            vs_c = cm / tm if tm and cm else None
            goals = (
                ("yes" if frac and frac >= GOAL_COPY else "no")
                + " / "
                + ("yes" if vs_c and vs_c >= GOAL_COMPILE else ("n/a" if vs_c is None else "no"))
            )
            lines.append(
                f"| {kernel} | {shape} | {mode} | {_fmt(tm)} | {_fmt(gbps, 0)} | "
                f"{_fmt(100 * frac if frac else None, 0)}% | "
                f"{_fmt(100 * gbps / NOMINAL_COPY_GBPS if gbps else None, 0)}% | "
                f"{_fmt(em)} | {_fmt(cm)} | "
                f"{_fmt(em / tm if tm and em else None, 2)} | {_fmt(vs_c, 2)} | {goals} |"
            )
    return lines


def sweep_table(data: dict) -> list[str]:
    rows = data.get("sweep") or []
    if not rows:
        return []
    base = {(r["kernel"], r["shape"]): r for r in data["rows"] if r["impl"] == "triton"}
    lines = [
        "| variant | shape | fwd ms (default) | fwd ms | fwd+bwd ms (default) | fwd+bwd ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        b = base.get((r["kernel"], r["shape"]), {})
        lines.append(
            f"| {r['variant']} | {r['shape']} | {_fmt(b.get('fwd_ms'), 4)} | "
            f"{_fmt(r.get('fwd_ms'), 4)} | {_fmt(b.get('fwd_bwd_ms'), 4)} | "
            f"{_fmt(r.get('fwd_bwd_ms'), 4)} |"
        )
    return lines


def tune_table(data: dict) -> list[str]:
    """Rows of a ``tune_norms.py`` run (each variant and the defaults timed in one run)."""
    lines = [
        "| variant | shape | fwd ms | fwd+bwd ms |",
        "| --- | --- | ---: | ---: |",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['variant']} | {r['shape']} | {_fmt(r.get('fwd_ms'), 4)} | "
            f"{_fmt(r.get('fwd_bwd_ms'), 4)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    previous = None
    if "--previous" in argv:
        i = argv.index("--previous")
        previous = json.loads(Path(argv[i + 1]).read_text())
        argv = argv[:i] + argv[i + 2 :]
    src, dst = Path(argv[0]), Path(argv[1])
    dst.mkdir(parents=True, exist_ok=True)
    data = json.loads((src / "kernels.json").read_text())
    shutil.copyfile(src / "kernels.json", dst / "kernels.json")
    ceiling = data["copy_ceiling"]
    out = [
        "# mugv-kernels benchmarks",
        "",
        f"- device: {data['device']}; date: {data['date']}; torch {data['torch']}, "
        f"triton {data['triton']}",
        f"- command (repository root, on the GPU machine): "
        f"`PYTHONPATH=packages/mugv-formats/src:packages/mugv-kernels/src python3 "
        f"packages/mugv-kernels/benchmarks/{data['command']}` ($OUT = the run's output folder; "
        f"`benchmarks/gpu_run.sh` runs the GPU tests and this in one go)",
        f"- copy ceiling measured in the same run: {ceiling['GBps']:.0f} GB/s "
        f"(1 GiB device-to-device copy, bytes read + written)",
        "- times: CUDA-graph replays (launch overhead excluded), median; several input sets "
        "rotate so the working set exceeds L2. `GB/s` = fewest bytes the op must move "
        "(activation-sized inputs read once, outputs written once) / time. eager = the PyTorch "
        "reference (`mugv_kernels.reference`), compile = `torch.compile` of it (default mode, "
        "static shapes). bf16 activations, fp32 accumulation.",
        "",
        *main_table(data),
        "",
    ]
    sweep = sweep_table(data)
    if sweep:
        out += ["## Launch-parameter sweep (Triton, one change at a time)", "", *sweep, ""]
    for tune_path in sorted(dst.glob("tune*.json")):
        tune = json.loads(tune_path.read_text())
        out += [
            f"## Tuning run ({tune_path.name}: each variant next to the defaults, same run)",
            "",
            f"device: {tune['device']}; date: {tune['date']}; command: "
            f"`python packages/mugv-kernels/benchmarks/{tune['command']}` (Triton only; the "
            "defaults were those of that moment, see FINDINGS).",
            "",
            *tune_table(tune),
            "",
        ]
    out += [
        "## Head-dim-72 attention",
        "",
        "The experimental Triton attention was removed (FlashAttention-4 serves the DiT and "
        "inference); its measurements and lessons: `attention.md`, "
        "`docs/kernels-attention-notes.md`.",
        "",
    ]
    if previous is not None:
        out += [
            "## Previous run (before this session's kernel changes)",
            "",
            f"device: {previous['device']}; date: {previous['date']}; copy ceiling "
            f"{previous['copy_ceiling']['GBps']:.0f} GB/s; command: "
            f"`{previous['command']}`",
            "",
            *main_table(previous),
            "",
        ]
    notes = dst / "FINDINGS.md"
    if notes.exists():
        out += [notes.read_text()]
    (dst / "README.md").write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
