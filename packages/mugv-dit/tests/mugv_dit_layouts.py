"""Run several training configs one after another in the SAME torchrun processes.

Starting torchrun and importing Megatron costs most of a small gloo test's time on a CPU
machine; the layout tests therefore share one launch. Between runs Megatron's model-parallel
groups are torn down, so each run may use another TP/PP/CP/DP layout.

    python -m torch.distributed.run --nproc-per-node 2 mugv_dit_layouts.py RUNS.json

``RUNS.json``: a list of ``{"config": PATH, "micro_batches": M, "max_steps": N|null}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from megatron.core import parallel_state
from mugv_dit.cli import quiet_megatron_warnings
from mugv_dit.config import load_config
from mugv_dit.parallel import destroy_distributed
from mugv_dit.trainer import Trainer


def main(spec_path: str) -> int:
    quiet_megatron_warnings()
    for run in json.loads(Path(spec_path).read_text()):
        cfg = load_config(run["config"])
        trainer = Trainer(cfg, micro_batches_per_step=run.get("micro_batches"))
        try:
            trainer.run(max_steps=run.get("max_steps"))
        finally:
            trainer.close()
            parallel_state.destroy_model_parallel()
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
