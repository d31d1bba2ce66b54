"""Power-function EMAs during training, their snapshots, and post-hoc reconstruction.

Snapshots are plain safetensors, one file per (snapshot, EMA, model shard)::

    RUN/ema_snapshots/step_0000100/sigma_0.0500/tp00_pp00.safetensors
    RUN/ema_snapshots/step_0000100/snapshot.json     {"step": 100, "emas": [...]} (written last)

Each shard file holds one tensor-/pipeline-parallel rank's fp32 EMA parameters under their
global names; its metadata records each tensor's tensor-parallel partition dim (-1 when
replicated), so reconstruction can assemble the full (TP=1) state dict. Reading never runs
code (safetensors and JSON only).

A LoRA run's EMAs (:func:`mugv_dit.lora.adapters.adapter_copy`) write only their adapters;
``snapshot.json`` then says ``"adapters_only": true`` with the base's dtype in the run
(``base_dtype``), and reconstruction folds the averaged adapters into the run's frozen base
(its ``train.init_from`` export, cast to that dtype as the policy held it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from mugv_dit.lora.names import holds_only_adapters, is_adapter_name
from mugv_dit.optim.master import PendingShards, lerp_to_masters_, master_params, sync_sharded_
from mugv_formats import atomic_write_text
from mugv_formats.checkpoint_dirs import step_dir_name
from torch import nn

from mugv_align.ema import gamma_to_sigma_rel, power_beta, sigma_rel_to_gamma, solve_weights

SNAPSHOT_INFO = "snapshot.json"


def ema_dir_name(sigma_rel: float) -> str:
    return f"sigma_{sigma_rel:.4f}"


class PowerEMAs(nn.Module):
    """Several fp32 power-function EMAs of a model, sharded like it (``ema0``, ``ema1``...).

    They average the optimizer's fp32 master weights
    (:func:`mugv_dit.optim.master.master_params`), not the
    bf16 model weights. Under a distributed optimizer each data-parallel rank folds in only
    the elements whose fp32 shard it holds (no extra traffic per step); :meth:`sync`
    assembles the full EMAs (one sum-reduce of the shards) before they are written, and is
    called by :meth:`save_snapshot` and :meth:`sharded_state_dict` (the checkpoint).

    Checkpoints through the model's sharded state dicts (prefix ``ema.emaK.``) and loads as
    a pipeline stage does (``layer_offset`` / ``global_name``)."""

    def __init__(self, make_model, sigma_rels: list[float]):
        super().__init__()
        if not sigma_rels:
            raise ValueError("align.ema_sigma_rels is empty")
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.emas = nn.ModuleList([make_model().requires_grad_(False) for _ in sigma_rels])
        self.layer_offset = getattr(self.emas[0], "layer_offset", 0)
        self.adapters_only = holds_only_adapters(self)
        # per EMA: the parameters it updated shard-wise since the last sync
        self._pending: list[PendingShards] = [{} for _ in sigma_rels]

    def global_name(self, name: str) -> str:
        head, _, rest = name.partition(".")  # "emas"
        idx, _, rest = rest.partition(".")
        inner = getattr(self.emas[int(idx)], "global_name", lambda n: n)
        return f"{head}.{idx}.{inner(rest)}"

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None) -> dict:
        self.sync()  # every rank builds its sharded state dict when a checkpoint is saved
        out = {}
        for i, m in enumerate(self.emas):
            out.update(m.sharded_state_dict(f"{prefix}emas.{i}.", sharded_offsets, metadata))
        return out

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        for m in self.emas:
            for p_ema, p in zip(m.parameters(), model.parameters(), strict=True):
                p_ema.copy_(p.detach().float())

    @torch.no_grad()
    def update(self, model: nn.Module, t: int, *, optimizer=None) -> None:
        """Fold in the weights after training step ``t`` (1-based):
        ``ema <- beta_t ema + (1 - beta_t) theta_t`` with ``theta_t`` the fp32 master weights
        ``optimizer`` holds for ``model`` (:func:`master_params`; the parameters themselves
        without an optimizer)."""
        masters = master_params(model, optimizer)
        for m, gamma, pending in zip(self.emas, self.gammas, self._pending, strict=True):
            lerp_to_masters_(list(m.parameters()), masters, 1.0 - power_beta(t, gamma), pending)

    @torch.no_grad()
    def sync(self) -> None:
        """Make every rank's EMAs whole after sharded updates
        (:func:`mugv_dit.optim.master.sync_sharded_`: one sum-reduce of the shards over the
        data-parallel group). Collective when there is something to sync (every rank calls
        it)."""
        for m, pending in zip(self.emas, self._pending, strict=True):
            sync_sharded_(list(m.parameters()), pending)

    def save_snapshot(self, root: Path, step: int, *, tp_rank: int, pp_rank: int, writer: bool):
        """Write this rank's shard of every EMA (``writer``: DP rank 0 and CP rank 0 only);
        the caller puts a barrier before :func:`finish_snapshot`."""
        from safetensors.torch import save_file

        self.sync()
        if not writer:
            return
        folder = root / step_dir_name(step)
        for sigma_rel, m in zip(self.sigma_rels, self.emas, strict=True):
            d = folder / ema_dir_name(sigma_rel)
            d.mkdir(parents=True, exist_ok=True)
            name_of = getattr(m, "global_name", lambda n: n)
            tensors, dims = {}, {}
            for name, p in m.named_parameters():
                if self.adapters_only and not is_adapter_name(name):
                    continue  # the shared frozen base: not this EMA's
                g = name_of(name)
                tensors[g] = p.detach().float().contiguous().cpu()
                tp = getattr(p, "tensor_model_parallel", False)
                dims[g] = int(p.partition_dim) if tp else -1
            path = d / f"tp{tp_rank:02d}_pp{pp_rank:02d}.safetensors"
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata={"partition_dims": json.dumps(dims)})
            tmp.replace(path)

    def finish_snapshot(self, root: Path, step: int) -> None:
        info = {
            "step": step,
            "emas": [
                {"sigma_rel": s, "gamma": g, "dir": ema_dir_name(s)}
                for s, g in zip(self.sigma_rels, self.gammas, strict=True)
            ],
        }
        if self.adapters_only:
            base = (p for n, p in self.emas[0].named_parameters() if not is_adapter_name(n))
            info["adapters_only"] = True
            info["base_dtype"] = str(next(base).dtype).removeprefix("torch.")
        atomic_write_text(root / step_dir_name(step) / SNAPSHOT_INFO, json.dumps(info, indent=2))


# -- post-hoc reconstruction -------------------------------------------------------------
def list_snapshots(root: str | Path) -> list[dict]:
    """Complete snapshots under ``root``: ``[{"path", "step", "sigma_rel", "gamma"}]``."""
    root = Path(root)
    out = []
    if not root.is_dir():
        raise ValueError(f"{root}: no EMA snapshots folder")
    for info_path in sorted(root.glob(f"step_*/{SNAPSHOT_INFO}")):
        try:
            info = json.loads(info_path.read_text())
            step = int(info["step"])
            emas = info["emas"]
            adapters_only = bool(info.get("adapters_only", False))
            base_dtype = str(info.get("base_dtype", "float32"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{info_path}: unreadable snapshot record ({e})") from None
        for e in emas:
            d = info_path.parent / str(e["dir"])
            if d.parent != info_path.parent:
                raise ValueError(f"{info_path}: EMA folder {e['dir']!r} leaves the snapshot")
            out.append(
                {
                    "path": d,
                    "step": step,
                    "sigma_rel": float(e["sigma_rel"]),
                    "gamma": float(e["gamma"]),
                    "adapters_only": adapters_only,
                    "base_dtype": base_dtype,
                }
            )
    if not out:
        raise ValueError(f"{root}: no complete EMA snapshot")
    return out


def reconstruction_weights(
    snapshots: list[dict], sigma_rel: float, step: int | None = None
) -> np.ndarray:
    """Least-squares weights (sum 1) of ``snapshots`` for the EMA of ``sigma_rel`` at
    ``step`` (default: the last snapshot's step)."""
    if step is None:
        step = max(s["step"] for s in snapshots)
    return solve_weights(
        [s["step"] for s in snapshots],
        [s["gamma"] for s in snapshots],
        float(step),
        sigma_rel_to_gamma(sigma_rel),
    )


def weighted_average(snapshots: list[dict], weights, *, min_weight: float = 0.0) -> dict:
    """Full (TP=1) state dict ``sum_i w_i snapshot_i``, accumulated in fp32 by streaming one
    shard file and one tensor at a time (only the output is held in memory)."""
    from safetensors import safe_open

    weights = [float(w) for w in weights]
    used = [(s, w) for s, w in zip(snapshots, weights, strict=True) if abs(w) > min_weight]
    shard_names = sorted(p.name for p in Path(used[0][0]["path"]).glob("*.safetensors"))
    if not shard_names:
        raise ValueError(f"{used[0][0]['path']}: no shard files")
    parts: dict[str, dict[int, torch.Tensor]] = {}  # name -> {tp rank: tensor}
    dims: dict[str, int] = {}
    for shard in shard_names:
        tp_rank = int(shard[2:4])
        acc: dict[str, torch.Tensor] = {}
        for snap, w in used:
            path = Path(snap["path"]) / shard
            if not path.is_file():
                raise ValueError(f"{path}: missing (snapshots have different layouts)")
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("partition_dims", "{}"))
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    x = f.get_tensor(name).float()
                    if name in acc:
                        acc[name].add_(x, alpha=w)
                    else:
                        acc[name] = x.mul_(w)
                    dims[name] = int(meta.get(name, -1))
        for name, x in acc.items():
            parts.setdefault(name, {})[tp_rank] = x
    state = {}
    for name, by_rank in parts.items():
        ranks = [by_rank[r] for r in sorted(by_rank)]
        state[name] = ranks[0] if dims[name] < 0 else torch.cat(ranks, dim=dims[name])
    return state


def describe(snapshots: list[dict]) -> list[str]:
    lines = []
    for s in snapshots:
        lines.append(
            f"step {s['step']:>8d}  sigma_rel {s['sigma_rel']:.4f}  gamma {s['gamma']:.3f}  "
            f"(check {gamma_to_sigma_rel(s['gamma']):.4f})"
        )
    return lines
