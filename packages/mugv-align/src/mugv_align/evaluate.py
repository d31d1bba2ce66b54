"""Held-out evaluation with one local model (TP=1): validation flow loss of a latent set
(``ema-sweep``) and preference accuracy / reward margin of held-out pairs or labels.

Draw ``d`` of every sample / item comes from :func:`mugv_align.data.draw_seed` of
(``seed``, the sample / item, ``d``), so two models (or two EMA candidates) are compared on
identical inputs.
"""

from __future__ import annotations

import torch
from mugv_dit.config import ObjectiveConfig
from mugv_dit.data.plan import LatentIndex, collate
from mugv_dit.model import PackedText

from mugv_align.data import ItemVisit, Source, build_batch, draw_seed, item_id, prepare_group
from mugv_align.losses import dpo_margin, per_sample_velocity_error


def _predict(model, noisy, sigma, texts, fps, mask, drop):
    return model(
        noisy,
        sigma,
        PackedText.from_list(texts),
        fps_B=fps,
        noisy_frames_BT=mask,
        drop_caption_B=drop,
    )


@torch.no_grad()
def validation_loss(
    model, index: LatentIndex, objective: ObjectiveConfig, *, seed: int = 0, draws: int = 1
) -> float:
    """Mean over samples (and ``draws`` noise draws each) of the per-sample flow loss; no
    caption dropout."""
    objective = objective.model_copy(update={"caption_dropout": 0.0})
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for i in range(len(index)):
        clean = collate([index.load(i)], "cpu")
        for d in range(draws):
            s = draw_seed(seed, index.records[i].key, d)
            noisy, sigma, target, mask, drop = prepare_group(
                clean.latents_BCTHW, clean.height_px, clean.width_px, objective, s, device=device
            )
            pred = _predict(
                model,
                noisy.to(device),
                sigma.to(device),
                [t.to(device) for t in clean.texts],
                clean.fps_B.to(device),
                mask.to(device),
                torch.tensor([drop]),
            )
            total += float(per_sample_velocity_error(pred, target.to(device), mask.to(device))[0])
            n += 1
    return total / max(1, n)


@torch.no_grad()
def preference_metrics(
    policy,
    reference,
    src: Source,
    objective: ObjectiveConfig,
    *,
    beta: float,
    seed: int = 0,
    draws: int = 4,
) -> dict:
    """Accuracy (share of pairs with a positive reward margin / KTO samples on their label's
    side of ``g = e_ref - e``) and mean margin (KTO: ``+-g`` by label) on held-out items, over ``draws`` noise draws."""
    objective = objective.model_copy(update={"caption_dropout": 0.0})
    device = next(policy.parameters()).device
    correct, margin_sum, n = 0, 0.0, 0
    for idx in range(len(src.items)):
        for d in range(draws):
            b = build_batch(src, [ItemVisit(idx, d)], objective, seed, device)

            def err(m, b=b):
                pred = _predict(
                    m,
                    b.noisy_BCTHW,
                    b.sigma_B,
                    b.texts,
                    b.fps_B,
                    b.noisy_frames_BT,
                    b.drop_caption_B,
                )
                return per_sample_velocity_error(pred, b.target_BCTHW, b.noisy_frames_BT)

            e, e_ref = err(policy), err(reference)
            if src.kind == "dpo":
                m = float(dpo_margin(e[:1], e[1:], e_ref[:1], e_ref[1:], beta)[0])
                correct += m > 0
            else:
                # signed: positive when the sample moved towards its label's side
                m = float(e_ref[0] - e[0]) * (1 if bool(b.desirable_B[0]) else -1)
                correct += m > 0
            margin_sum += m
            n += 1
    return {"accuracy": correct / max(1, n), "margin": margin_sum / max(1, n), "items": n}


__all__ = ["item_id", "preference_metrics", "validation_loss"]
