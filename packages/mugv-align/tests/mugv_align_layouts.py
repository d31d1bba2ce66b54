"""Run several align configs one after another in the SAME torchrun processes.

    python -m torch.distributed.run --nproc-per-node 2 mugv_align_layouts.py RUNS.json

``RUNS.json``: a list of ``{"config": PATH, "micro_batches": M}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from megatron.core import parallel_state
from mugv_align.config import load_align_config
from mugv_align.trainer import AlignTrainer
from mugv_dit.cli import quiet_megatron_warnings
from mugv_dit.parallel import destroy_distributed


def main(spec_path: str) -> int:
    quiet_megatron_warnings()
    for run in json.loads(Path(spec_path).read_text()):
        trainer = AlignTrainer(
            load_align_config(run["config"]), micro_batches_per_step=run.get("micro_batches")
        )
        try:
            trainer.run()
        finally:
            trainer.close()
            parallel_state.destroy_model_parallel()
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
