"""Samples during training: the weights of every ``samples.every_steps``-th step as an export.

mugv-dit does not render videos (it may not import mugv-infer or the VAE); it writes what a
renderer needs and goes on training:

    OUTPUT/samples/exports/step_NNNNNNN/    a mugv.dit-export of the weights after step N,
                                            extra = {"step", "weights", "run", "samples": the
                                            run's ``samples`` config (prompts, seeds, size)}

``mugv eval watch OUTPUT`` (the umbrella package ``mugv``, which may import every stage) renders
each new export through mugv-infer to ``OUTPUT/samples/videos/step_NNNNNNN/`` (mp4) and to
TensorBoard, the same prompts and seeds every time, so the runs' samples compare across steps.

The weights (``samples.weights``: the EMA when the run keeps one, else the model's) are
gathered from the trainer's layout without a checkpoint round trip: tensor-parallel shards
concatenated along their partition dim (a gather to TP rank 0), pipeline stages' parameters
under their global names (gathered to PP rank 0), by the DP/CP replica of global rank 0;
float32, as ``mugv-dit export`` writes a checkpoint (a LoRA run's adapters merged, as
``--merge-lora`` does). The export is written atomically
(``save_export``: claimed, then committed); a resumed run overwrites an export of the same
step. After a write, exports of later steps (left by a run killed and resumed from an earlier
checkpoint) are removed, and all but the newest ``samples.keep``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from mugv_formats import DIT_EXPORT_FORMAT
from mugv_formats.checkpoint_dirs import checkpoint_step, step_dir_name
from mugv_formats.outputs import artifact_kind, marker_kind

from mugv_dit.config import RunConfig

EXPORTS = Path("samples") / "exports"


def exports_root(output_dir: str | Path) -> Path:
    """Where a run's sample exports live."""
    return Path(output_dir) / EXPORTS


def sample_weights_kind(cfg: RunConfig) -> str:
    """``ema`` or ``model``: what ``samples.weights`` means for this run."""
    choice = cfg.samples.weights
    if choice == "auto":
        return "ema" if cfg.train.ema_decay is not None else "model"
    if choice == "ema" and cfg.train.ema_decay is None:
        raise ValueError("samples.weights=ema, but the run keeps no EMA (train.ema_decay=null)")
    return choice


@torch.no_grad()
def gather_full_state_dict(module: torch.nn.Module, parallel, *, tp_group, pp_group,
                           on_replica_zero: bool) -> dict[str, torch.Tensor] | None:  # fmt: skip
    """The full (TP=1, all stages) float32 state dict of ``module`` on global rank 0, None
    elsewhere. Ranks of the DP/CP replica of rank 0 (``on_replica_zero``) take part; the
    others return at once."""
    if not on_replica_zero:
        return None
    global_name = getattr(module, "global_name", lambda name: name)
    local: dict[str, torch.Tensor] = {}
    tp_dst = dist.get_process_group_ranks(tp_group)[0] if parallel.tp_size > 1 else None
    for name, p in module.named_parameters():
        t = p.detach().float().contiguous()
        if parallel.tp_size > 1 and getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(t) for _ in range(parallel.tp_size)] if parallel.tp_rank == 0 else None
            dist.gather(t, parts, dst=tp_dst, group=tp_group)
            if parallel.tp_rank == 0:
                t = torch.cat(parts, dim=p.partition_dim)
        if parallel.tp_rank == 0:
            local[global_name(name)] = t.cpu()
    if parallel.tp_rank != 0:
        return None
    if parallel.pp_size > 1:
        stages = [None] * parallel.pp_size if parallel.pp_rank == 0 else None
        dist.gather_object(local, stages, dst=dist.get_process_group_ranks(pp_group)[0],
                           group=pp_group)  # fmt: skip
        if parallel.pp_rank != 0:
            return None
        local = {k: v for stage in stages for k, v in stage.items()}
    return local


def prune_exports(root: Path, step: int, keep: int) -> list[Path]:
    """Remove sample exports of steps after ``step`` and all but the newest ``keep`` (0: all)
    of the rest; only complete or interrupted ``step_*`` exports of ours are touched."""
    found = sorted(
        (s, p) for p in root.glob("step_*") if (s := checkpoint_step(p.name)) is not None
    )
    drop = [p for s, p in found if s > step]
    kept = [p for s, p in found if s <= step]
    if keep:
        drop += kept[:-keep]
    removed = []
    for p in drop:
        if p.is_symlink() or not p.is_dir():
            continue
        mark = marker_kind(p)
        if artifact_kind(p) != DIT_EXPORT_FORMAT and (mark is None or mark[0] != DIT_EXPORT_FORMAT):
            continue  # not an export of ours (complete or interrupted): never touched
        shutil.rmtree(p)
        removed.append(p)
    return removed


def write_sample_export(trainer) -> Path | None:
    """Write the trainer's current weights as the sample export of step ``trainer.step``
    (module doc). Collective: every rank calls it; returns the folder on rank 0."""
    from megatron.core import parallel_state

    from mugv_dit.interop.export import save_export

    cfg = trainer.cfg
    kind = sample_weights_kind(cfg)
    if kind == "ema":
        trainer.sync_ema()
        module = trainer.ema
    else:
        module = trainer.model.module
    state = gather_full_state_dict(
        module,
        trainer.parallel,
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        pp_group=trainer.pp_group,
        on_replica_zero=trainer.dp_cp_rank == 0,
    )
    path = None
    if trainer.rank == 0:
        root = exports_root(trainer.out)
        path = root / step_dir_name(trainer.step)
        root.mkdir(parents=True, exist_ok=True)
        extra = {
            "step": trainer.step,
            "weights": kind,
            "run": str(trainer.out),
            "samples": cfg.samples.model_dump(mode="json"),
        }
        if cfg.lora is not None:  # a LoRA run's samples: its adapters folded in, as export does
            from mugv_dit.lora.merge import merge_lora_state

            state = merge_lora_state(state, cfg.lora.scale)
            extra["lora"] = {"merged": True, **cfg.lora.model_dump(mode="json")}
        save_export(path, cfg.model, state, extra, overwrite=True)
        prune_exports(root, trainer.step, cfg.samples.keep)
    dist.barrier()
    return path
