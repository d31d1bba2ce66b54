"""Validate a run's checkpoint under several layouts in ONE torchrun launch.

    python -m torch.distributed.run --nproc-per-node 2 mugv_dit_validation_worker.py SPEC.json

``SPEC.json``: a list of ``{"config": PATH, "result": PATH}``; each config's output folder
holds the checkpoint to resume; rank 0 writes the validation metrics to ``result``; every
layout also writes its sample export (``OUTPUT/samples/exports/step_N``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from megatron.core import parallel_state
from mugv_dit.cli import quiet_megatron_warnings
from mugv_dit.config import load_config
from mugv_dit.parallel import destroy_distributed
from mugv_dit.samples import write_sample_export
from mugv_dit.trainer import Trainer


def main(spec_path: str) -> int:
    quiet_megatron_warnings()
    for run in json.loads(Path(spec_path).read_text()):
        trainer = Trainer(load_config(run["config"]), micro_batches_per_step=2)
        try:
            result = trainer.validate()
            write_sample_export(trainer)  # the live weights gathered from this layout
            if dist.get_rank() == 0:
                Path(run["result"]).write_text(json.dumps(result))
        finally:
            trainer.close()
            parallel_state.destroy_model_parallel()
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
