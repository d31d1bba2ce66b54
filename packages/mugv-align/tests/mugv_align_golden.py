"""Golden losses: a seeded tiny Flow-DPO run and a seeded tiny Flow-KTO run on CPU (fp32),
their per-step loss values, compared by test_golden.py against ``golden/losses.json``.

Regenerate the file (after a deliberate change of the numerics, say why in the commit):

    uv run python packages/mugv-align/tests/mugv_align_golden.py --write

Everything is seeded: the synthetic task's latents and texts (numpy), the initial weights
(torch), the noise / timesteps of each item (data.seed) and the preference sampler.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mugv_align_fixtures import make_export, make_task_latents, write_config, write_labels

GOLDEN = Path(__file__).parent / "golden" / "losses.json"
STEPS = 5
KEYS = ("loss", "pref_loss", "reward_margin", "pref_accuracy", "mean_error_gap", "sft_loss")


def _align(kind: str, root: Path) -> dict:
    align = {
        "mode": kind,
        "preference": [{"path": str(root / f"{kind}_train")}],
        "beta": 20.0,
        "sft_weight": 0.5,
        "items_per_micro_batch": 2,
        "reference_from": str(root / "init"),
        "ema_sigma_rels": [],
    }
    if kind == "kto":
        align.update(desirable_weight=1.0, undesirable_weight=1.5)
    return align


def golden_losses(workdir: Path) -> dict:
    """Per-step values of ``KEYS`` (and the grad norm) of both runs, from scratch in
    ``workdir``. Needs Megatron's single-process state (initialised here when absent)."""
    from megatron.core import parallel_state
    from mugv_align.config import load_align_config
    from mugv_align.prefs import make_prefs
    from mugv_align.trainer import AlignTrainer
    from mugv_dit.parallel import init_distributed

    if not parallel_state.model_parallel_is_initialized():
        init_distributed(1, backend="gloo")
    make_task_latents(workdir / "lat", prompts=8, seed=0)
    make_export(workdir / "init", seed=0)
    runs = {}
    for kind in ("dpo", "kto"):
        make_prefs(
            workdir / "lat", write_labels(workdir / f"{kind}.jsonl", range(8), kind),
            workdir / f"{kind}_train",
        )  # fmt: skip
        cfg = write_config(
            workdir / f"{kind}.yaml",
            workdir / f"{kind}_run",
            align=_align(kind, workdir),
            steps=STEPS,
            lr=2e-3,
            train={"init_from": str(workdir / "init")},
        )
        trainer = AlignTrainer(load_align_config(cfg), micro_batches_per_step=2)
        try:
            logs = trainer.run()
        finally:
            trainer.close()
        runs[kind] = [{k: log[k] for k in (*KEYS, "grad_norm")} for log in logs]
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        runs = golden_losses(Path(tmp))
    doc = {
        "generated_by": "uv run python packages/mugv-align/tests/mugv_align_golden.py --write",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "steps": STEPS,
        "runs": runs,
    }
    text = json.dumps(doc, indent=1) + "\n"
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
