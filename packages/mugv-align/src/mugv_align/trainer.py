"""Post-training on mugv-dit's Megatron trainer: SFT, Flow-DPO, Flow-KTO, power EMAs.

``AlignTrainer`` extends ``mugv_dit.trainer.Trainer`` (process groups, Megatron DDP,
distributed optimizer, distributed checkpoints, resume, annealed LR schedules) through its
public hooks (``train_step``, ``update_ema``, ``save``); the objectives below are loss
functions run through the base trainer's one schedule call (``schedule``) and one optimizer
step (``apply_step``), with the process groups and parallel context the base trainer holds
(no Megatron globals read here):

* ``sft``: mugv-dit's step unchanged (flow loss on the curated latent set in ``data.path``,
  LR from the curriculum, e.g. ``lr_decay: cosine``) plus the power EMAs.
* ``dpo`` / ``kto``: the step's micro-batches come from preference sets
  (:mod:`mugv_align.data`); the loss is computed from per-sample velocity errors of the
  policy and of a frozen reference (a live model sharded like the policy, no gradients or
  optimizer state; or errors precomputed with the same per-item seeds). With ``lora`` the
  live reference is the base itself: the policy's forward with its adapters switched off.
  ``align.pair_chunking=per_sample`` runs the samples one at a time with the same gradient
  (:mod:`mugv_align.pair_chunking`).

Power EMAs (``align.ema_sigma_rels``) replace mugv-dit's single EMA in the ``ema`` slot of
the checkpoint, so they resume exactly; snapshots for post-hoc reconstruction go to
``OUTPUT/ema_snapshots``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from mugv_dit.build import build_model
from mugv_dit.checkpoint import latest_checkpoint, load_model_weights
from mugv_dit.diffusion.loss import masked_velocity_sse
from mugv_dit.interop.export import architecture_differences, load_export, load_full_state_dict
from mugv_dit.lora.adapters import adapter_copy, adapters_enabled
from mugv_dit.model import MUGDiT, PackedText
from mugv_dit.trainer import Trainer
from mugv_formats import atomic_write_text, read_preference_data
from mugv_formats.checkpoint_dirs import checkpoint_step, step_dir_name, step_dirs

from mugv_align.config import AlignRunConfig
from mugv_align.data import PreferenceSampler, build_batch, load_source, resolve_latent_path
from mugv_align.losses import kto_reference_point, per_sample_velocity_error
from mugv_align.pair_chunking import (
    RowLosses,
    policy_rows_needed,
    preference_terms,
    split_rows,
)
from mugv_align.reference import policy_dtype, read_reference_errors
from mugv_align.snapshots import PowerEMAs

# logged per step (metrics.jsonl, TensorBoard align/*); formulas in the README's metric table
METRICS = ("pref_loss", "reward_margin", "pref_accuracy", "mean_error_gap", "sft_loss")


class AlignTrainer(Trainer):
    """Runs an AlignRunConfig to completion, resuming from its output folder."""

    run_folder_entries = (*Trainer.run_folder_entries, "ema_snapshots", "checkpoints/align_state")

    def __init__(self, cfg: AlignRunConfig, *, micro_batches_per_step: int | None = None):
        a = cfg.align
        self.sources = []
        if a.mode != "sft" and cfg.data.path is None:
            # the base trainer indexes a latent set: use the first preference set's
            p = Path(a.preference[0].path)
            if not (p / "dataset.json").is_file():
                raise ValueError(f"preference set {p} does not exist (no dataset.json)")
            header, _ = read_preference_data(p)
            cfg = cfg.model_copy(deep=True)
            cfg.data.path = str(resolve_latent_path(p, header.latent_dataset))
        super().__init__(cfg, micro_batches_per_step=micro_batches_per_step)
        self.align = a
        # 8. power EMAs (fp32, sharded like the policy) in the checkpoint's `ema` slot
        ckpt = latest_checkpoint(self.ckpt_root)
        if a.ema_sigma_rels:

            def make():
                if cfg.lora is not None:  # EMAs of the adapters; their base IS the base
                    return adapter_copy(self.model.module, torch.float32)
                model = build_model(cfg.model, layout=self.parallel, runtime=cfg.runtime)
                return model.to(self.device)

            self.ema = PowerEMAs(make, a.ema_sigma_rels)
            if ckpt is not None:
                load_model_weights(ckpt, self.ema, which="ema")
            else:
                self.ema.copy_from(self.model.module)
        # 9. preference sets, sampler and reference
        self.ref_model = None
        # LoRA: the reference is the base, i.e. the policy itself with its adapters switched
        # off (no second model in memory); the base is train.init_from
        self.reference_is_base = False
        self.ref_errors = None  # ReferenceErrors (align.reference=precomputed)
        self.fixed_seeds = None  # its stored draw seeds: every visit reuses them
        if a.mode != "sft":
            for s in a.preference:
                self.sources.append(
                    load_source(
                        s.path,
                        kind=a.mode,
                        text_dim=cfg.model.text_dim,
                        channels=cfg.model.in_channels,
                    )
                )
            self.pref_sampler = PreferenceSampler(
                self.sources,
                [s.weight for s in a.preference],
                items_per_micro_batch=a.items_per_micro_batch,
                micro_batches_per_step=self.micro_batches,
                seed=cfg.data.seed,
                weighted=cfg.data.weighted_sampling,
            )
            if ckpt is not None:
                state_file = self._align_state_path(self.step)
                if not state_file.is_file():
                    raise ValueError(f"{state_file} missing: cannot resume the preference sampler")
                self.pref_sampler.load_state_dict(json.loads(state_file.read_text()))
            if a.reference == "live" and cfg.lora is not None and a.reference_from is None:
                self.reference_is_base = True  # the policy with its adapters off
            elif a.reference == "live":
                self.ref_model = self._build_reference(cfg)
            else:
                self.ref_errors = read_reference_errors(
                    a.reference_errors,
                    data_seed=cfg.data.seed,
                    objective=cfg.objective.model_dump(mode="json"),
                    dtype=policy_dtype(cfg, self.device),
                )
                self.fixed_seeds = self.ref_errors.draw_seeds

    def _build_reference(self, cfg) -> MUGDiT:
        """The frozen reference: same layout and dtype as the policy, no grads, no optimizer."""
        path = cfg.align.reference_from or cfg.train.init_from
        model_cfg, state = load_export(path)
        differences = architecture_differences(model_cfg, cfg.model)
        if differences:
            raise ValueError(
                f"reference {path}: its model config differs from this run's: "
                + ", ".join(differences)
            )
        dtype = next(self.model.module.parameters()).dtype
        ref = build_model(
            cfg.model,
            dtype=dtype,
            layout=self.parallel,
            runtime=cfg.runtime,
            sequence_parallel=cfg.parallel.sequence_parallel,
        ).to(self.device)
        load_full_state_dict(ref, state)
        return ref.eval().requires_grad_(False)

    # -- EMA (mugv-dit's update_ema hook) --------------------------------------------------
    @torch.no_grad()
    def update_ema(self) -> None:
        """The power EMAs at step ``self.step + 1`` (or mugv-dit's single EMA)."""
        if isinstance(self.ema, PowerEMAs):
            self.ema.update(self.model.module, self.step + 1, optimizer=self.optimizer)
        else:
            super().update_ema()

    def _maybe_snapshot(self, step: int, force: bool = False) -> None:
        if not isinstance(self.ema, PowerEMAs):
            return
        every = self.align.ema_snapshot_every
        if not force and not (every and step % every == 0):
            return
        root = self.out / "ema_snapshots"
        self.ema.save_snapshot(
            root,
            step,
            tp_rank=self.parallel.tp_rank,
            pp_rank=self.parallel.pp_rank,
            writer=self.dp_cp_rank == 0,
        )
        dist.barrier()
        if self.rank == 0:
            self.ema.finish_snapshot(root, step)
        dist.barrier()

    def _align_state_path(self, step: int) -> Path:
        return self.ckpt_root / "align_state" / f"{step_dir_name(step)}.json"

    def save(self) -> Path:
        """EMA snapshot and preference-sampler state (JSON) first, then mugv-dit's checkpoint,
        whose ``latest`` pointer is written last: a kill in between leaves the previous
        checkpoint complete."""
        self._maybe_snapshot(self.step, force=True)
        if self.sources and self.rank == 0:
            path = self._align_state_path(self.step)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(self.pref_sampler.state_dict()))
        saved = super().save()
        if self.rank == 0:
            self._prune_align_state()
        return saved

    def _prune_align_state(self) -> None:
        """Drop the sampler states of checkpoints that ``train.keep_checkpoints`` removed
        (those older than the oldest step folder left)."""
        kept = [checkpoint_step(p.name) for p in step_dirs(self.ckpt_root)]
        kept = [s for s in kept if s is not None]
        if not kept:
            return
        for f in (self.ckpt_root / "align_state").glob("step_*.json"):
            step = checkpoint_step(f.stem)
            if step is not None and step < min(kept):
                f.unlink(missing_ok=True)

    # -- one step (mugv-dit's train_step hook) ---------------------------------------------
    def train_step(self, stage_idx, stage, in_stage) -> dict:
        """SFT: mugv-dit's step; DPO / KTO: :meth:`_preference_step`. Then the EMA snapshot
        (if due) and the align metrics."""
        if self.align.mode == "sft":
            log = super().train_step(stage_idx, stage, in_stage)
        else:
            log = self._preference_step(stage, in_stage)
        if "loss" in log:
            self._maybe_snapshot(self.step + 1)
            self._report(log)
        return log

    def _report(self, log: dict) -> None:
        if self.rank != 0:
            return
        step = self.step + 1
        if self.writer is not None:
            for k in METRICS:
                if k in log:
                    self.writer.add_scalar(f"align/{k}", log[k], step)
        every = self.align.console_every
        if every and step % every == 0:
            parts = [f"{k}={log[k]:.4g}" for k in ("loss", *METRICS) if k in log]
            print(f"step {step}: " + " ".join(parts), flush=True)

    def _preference_step(self, stage, in_stage) -> dict:
        cfg, a = self.cfg, self.align
        s, plan = self.pref_sampler.plan(self.step)
        src = self.sources[s]
        mine = list(range(self.dp_rank, self.micro_batches, self.dp_size))
        seed, fixed = cfg.data.seed, self.fixed_seeds  # fixed: precomputed reference's draws
        batches = [
            build_batch(src, plan[mb], cfg.objective, seed, self.device, fixed_seeds=fixed)
            for mb in mine
        ]
        self._set_reference_errors(batches)
        per_sample = a.pair_chunking == "per_sample"
        # the policy's errors without gradients: KTO's reference point (every sample);
        # per-sample DPO's losers (their winners' loss coefficients)
        policy_errors = None
        if src.kind == "kto":
            policy_errors = self._errors(self.model, batches)
        elif per_sample:
            policy_errors = self._errors(self.model, batches, rows_of=policy_rows_needed)
        # global normalisers: items, SFT elements (winners / desirable samples)
        n_items = sum(len(b.ids) for b in batches)
        sft_count = 0
        for b in batches:
            n = len(b.ids)
            c, h, w = b.latent_shape[1], b.latent_shape[3], b.latent_shape[4]
            sft_rows = (
                b.noisy_frames_BT[:n]
                if src.kind == "dpo"
                else b.noisy_frames_BT[b.desirable_B.to(b.noisy_frames_BT.device)]
            )
            sft_count += int(sft_rows.sum()) * c * h * w
        stats = torch.tensor([n_items, sft_count], dtype=torch.float64, device=self.device)
        dist.all_reduce(stats, group=self.dp_group)
        total_items, total_sft = float(stats[0]), max(1.0, float(stats[1]))
        z = None
        if src.kind == "kto":
            z = self._kto_reference_point(batches, policy_errors, total_items)

        def forward_backward() -> tuple[float, dict]:
            if per_sample:
                sums = self._per_sample_forward_backward(
                    batches, policy_errors, src.kind, total_items, total_sft, z
                )
            else:
                sums = self._preference_forward_backward(
                    batches, src.kind, total_items, total_sft, z
                )
            pref, margin, correct, gap, sft_sse, n_e = (float(x) for x in self.sum_over_step(sums))
            n = max(1.0, total_items)
            sft_loss = sft_sse / total_sft
            metrics = {
                "pref_loss": pref / n,
                "reward_margin": margin / n,
                "pref_accuracy": correct / n,
                "mean_error_gap": gap / max(1.0, n_e),
                "sft_loss": sft_loss,
                "source": s,
                "items": int(total_items),
            }
            if z is not None:
                metrics["kto_z"] = float(z)
            return pref / n + a.sft_weight * sft_loss, metrics

        where = f"source {src.path}, items {[i for b in batches for i in b.ids]}"
        return self.apply_step(stage, in_stage, forward_backward, where)

    def _forward(self, model, b):
        return model(
            b.noisy_BCTHW,
            b.sigma_B.to(self.device),
            PackedText.from_list(b.texts),
            fps_B=b.fps_B,
            noisy_frames_BT=b.noisy_frames_BT,
            drop_caption_B=b.drop_caption_B,
        )

    @torch.no_grad()
    def _pipeline_errors(self, model, batches) -> list[torch.Tensor | None]:
        """Per-sample velocity errors of ``model`` (the policy or the frozen reference) on
        each micro-batch, without gradients, through the trainer's forward-only schedule (with
        PP > 1 the stages hand the activations on): the errors on the last pipeline stage,
        None on the others."""

        def step_fn(m, b):
            pred = self._forward(m, b)

            def loss_func(pred_BCTHW):
                e = per_sample_velocity_error(pred_BCTHW, b.target_BCTHW, b.noisy_frames_BT)
                return e.sum(), {"e": e}

            return pred, loss_func

        shapes = [b.latent_shape for b in batches]
        outputs = self.schedule(step_fn, batches, shapes, model=model, forward_only=True)
        return [out["e"] for out in outputs] or [None] * len(batches)

    def _errors(self, model, batches, rows_of=None) -> list[torch.Tensor | None]:
        """:meth:`_pipeline_errors` per micro-batch; with ``pair_chunking=per_sample`` run one
        row at a time (the no-grad forwards hold one sample's activations too), only the
        rows ``rows_of(batch, kind)`` lists when given (NaN for the others)."""
        if self.align.pair_chunking != "per_sample":
            return self._pipeline_errors(model, batches)
        picked = [
            list(range(b.noisy_BCTHW.shape[0])) if rows_of is None else rows_of(b, self.align.mode)
            for b in batches
        ]
        rows = [split_rows(b)[i] for b, idx in zip(batches, picked, strict=True) for i in idx]
        errors = self._pipeline_errors(model, rows) if rows else []
        if not errors or errors[0] is None:  # not the last pipeline stage
            return [None] * len(batches)
        out, k = [], 0
        for b, idx in zip(batches, picked, strict=True):
            e = torch.full(
                (b.noisy_BCTHW.shape[0],), float("nan"), dtype=errors[0].dtype, device=self.device
            )
            for i in idx:
                e[i] = errors[k][0]
                k += 1
            out.append(e)
        return out

    def _set_reference_errors(self, batches) -> None:
        """``b.ref_error_B`` of every micro-batch: the live reference's errors (on the last
        pipeline stage, where the loss is computed; None elsewhere) or the precomputed ones
        (DPO: ``[w_1..w_B, l_1..l_B]``; KTO: ``[e_1..e_B]``)."""
        if self.ref_model is not None or self.reference_is_base:
            if self.reference_is_base:
                with adapters_enabled(self.model.module, False):
                    errors = self._errors(self.model, batches)
            else:
                errors = self._errors(self.ref_model, batches)
            for b, e in zip(batches, errors, strict=True):
                b.ref_error_B = e
            return
        for b in batches:
            rows = []
            for ident in b.ids:
                if ident not in self.ref_errors.errors:
                    raise ValueError(
                        f"{self.align.reference_errors}: no reference error of {ident}"
                    )
                rows.append(self.ref_errors.errors[ident])
            cols = list(zip(*rows, strict=True))
            b.ref_error_B = torch.tensor([x for col in cols for x in col], device=self.device)

    def _kto_reference_point(self, batches, policy_errors, total_items: float) -> torch.Tensor:
        """z = max(0, mean of g = e_ref - e over the global batch), detached, from the no-grad
        policy errors of this rank's micro-batches (:meth:`_errors`), summed over the
        pipeline stages (only the last one holds errors) and the DP ranks."""
        g_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for b, e in zip(batches, policy_errors, strict=True):
            if e is not None:
                g_sum += (b.ref_error_B - e).double().sum()
        self.sum_over_step(g_sum)
        return kto_reference_point(g_sum, total_items).float()

    def _preference_forward_backward(self, batches, kind, total_items, total_sft, z):
        a = self.align
        n_micro = len(batches)
        # DDP averages over DP x CP ranks and the schedule scales each micro-batch's loss by
        # CP / n_micro: the net gradient is that of the global sums / global counts
        scale = self.dp_size * n_micro

        def step_fn(model, b):
            pred = self._forward(model, b)

            def loss_func(pred_BCTHW):
                e = per_sample_velocity_error(pred_BCTHW, b.target_BCTHW, b.noisy_frames_BT)
                e_ref = b.ref_error_B.to(e.dtype)
                pref, margin, sft_rows = preference_terms(e, e_ref, b, kind, a, z)
                sft = masked_velocity_sse(
                    pred_BCTHW[sft_rows], b.target_BCTHW[sft_rows], b.noisy_frames_BT[sft_rows]
                )
                loss = pref.sum() / total_items + a.sft_weight * sft / total_sft
                metrics = _metric_sums(pref, margin, e, e_ref, sft)
                return loss * scale, {"sums": metrics}

            return pred, loss_func

        sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        for out in self.schedule(step_fn, batches, [b.latent_shape for b in batches]):
            sums += out["sums"]
        return sums

    def _per_sample_forward_backward(
        self, batches, policy_errors, kind, total_items, total_sft, z
    ) -> torch.Tensor:
        """``pair_chunking=per_sample``: one forward/backward per row through the schedule,
        each row's loss coefficient ``dL/de`` taken at its turn (on the last pipeline stage)
        from its own error and the errors known then (:class:`RowLosses`). Same metric sums
        as :meth:`_preference_forward_backward`."""
        a = self.align
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        items, per_batch = [], []
        for b, e in zip(batches, policy_errors, strict=True):
            losses = None
            if e is not None:  # the last pipeline stage: the loss lives here
                losses = RowLosses(e, b.ref_error_B.to(e.dtype), b, kind, a, z, total_items)
                per_batch.append(losses)
            items += [(row, losses, r) for r, row in enumerate(split_rows(b))]
        scale = self.dp_size * len(items)  # as in _preference_forward_backward, per row

        def step_fn(model, item):
            row, losses, r = item
            pred = self._forward(model, row)

            def loss_func(pred_BCTHW):
                loss, sse = losses.loss(r, pred_BCTHW, row, total_sft)
                return loss * scale, {"sse": sse.double()}

            return pred, loss_func

        shapes = [row.latent_shape for row, _, _ in items]
        for out in self.schedule(step_fn, items, shapes):
            sums[4] += out["sse"]
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        for losses in per_batch:  # the metrics at the rows' own errors
            terms = losses.terms()
            sums += _metric_sums(terms.pref, terms.margin, losses.e, losses.e_ref, zero)
        return sums


def _metric_sums(pref, margin, e, e_ref, sft) -> torch.Tensor:
    """The micro-batch's metric sums: preference loss, margin, correct items, error gap,
    SFT squared error, sample count (float64)."""
    return torch.stack(
        [
            pref.detach().sum().double(),
            margin.detach().sum().double(),
            (margin > 0).sum().double(),
            (e.detach() - e_ref).sum().double(),  # mean_error_gap
            sft.detach().double(),
            torch.tensor(float(e.numel()), dtype=torch.float64, device=e.device),
        ]
    )
