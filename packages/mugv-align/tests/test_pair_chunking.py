"""align.pair_chunking=per_sample (issue 26): one sample at a time, coefficients dL/de from
no-grad errors, then one forward/backward per row, gives the gradient of the joint loss.

The joint references are written here from the losses' definitions (Flow-DPO:
``-logsigmoid(-beta/2 [(e_w - e_w_ref) - (e_l - e_l_ref)])``, Flow-KTO:
``w_y sigmoid(-+beta (e_ref - e - z))``, plus the SFT regulariser on winners / desirable
samples), float64, on a tiny LoRA-adapted MUGDiT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mugv_align_fixtures import write_config
from test_lora_align import LORA, _metrics
from test_train_align import _run

BETA, SFT_WEIGHT = 20.0, 0.3


def _model():
    from mugv_dit import build_model
    from mugv_dit.config import model_preset
    from mugv_dit.lora import LoraConfig
    from mugv_dit.lora.adapters import apply_lora, lora_parameters

    torch.manual_seed(0)
    model = build_model(model_preset("debug"), dtype=torch.float64).eval()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B != 0: the policy differs from the base (its reference)
        for name, p in sorted(lora_parameters(model).items()):
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model


def _batch(rows: int, items: int, desirable=None):
    """A micro-batch of ``rows`` samples (debug model: 24 channels, 32-dim text) with
    noisy-frame masks that differ per row (one row keeps a conditioning frame)."""
    from mugv_align.data import PrefBatch

    g = torch.Generator().manual_seed(2)
    noisy = torch.randn(rows, 24, 3, 4, 4, dtype=torch.float64, generator=g)
    mask = torch.ones(rows, 3, dtype=torch.bool)
    mask[0, 0] = False
    return PrefBatch(
        noisy_BCTHW=noisy,
        sigma_B=torch.rand(rows, dtype=torch.float64, generator=g),
        target_BCTHW=torch.randn(rows, 24, 3, 4, 4, dtype=torch.float64, generator=g),
        noisy_frames_BT=mask,
        drop_caption_B=torch.zeros(rows, dtype=torch.bool),
        texts=[torch.randn(3 + r, 32, dtype=torch.float64, generator=g) for r in range(rows)],
        fps_B=torch.full((rows,), 24.0, dtype=torch.float64),
        latent_shape=tuple(noisy.shape),
        ids=[f"item{i}" for i in range(items)],
        seeds=list(range(items)),
        weight_B=torch.tensor([1.0, 0.5, 2.0][:items], dtype=torch.float64),
        desirable_B=torch.tensor(desirable if desirable is not None else [True] * items),
    )


def _forward(model, b):
    from mugv_dit.model import PackedText

    return model(
        b.noisy_BCTHW,
        b.sigma_B,
        PackedText.from_list(b.texts),
        fps_B=b.fps_B,
        noisy_frames_BT=b.noisy_frames_BT,
        drop_caption_B=b.drop_caption_B,
    )


def _errors_and_sse(pred, b):
    """Spec: per-row mean squared velocity error over the noisy frames' elements, and the
    per-row sum of squared errors (the SFT regulariser's numerator)."""
    c = b.target_BCTHW.shape[1]
    sq = (pred[:, :c] - b.target_BCTHW) ** 2 * b.noisy_frames_BT[:, None, :, None, None]
    sse = sq.flatten(1).sum(1)
    count = b.noisy_frames_BT.sum(1) * c * 16
    return sse / count, sse


def _grads(model):
    from mugv_dit.lora.adapters import lora_parameters

    return {n: p.grad.clone() for n, p in sorted(lora_parameters(model).items())}


def _per_sample_grads(model, b, kind, align, z, e_ref, total_items, total_sft):
    """The package's per-sample path as the trainer runs it: no-grad policy errors of the
    rows policy_rows_needed names (NaN elsewhere), then the rows in order, each taking its
    coefficient at its turn (RowLosses) and running its backward."""
    from mugv_align.losses import per_sample_velocity_error
    from mugv_align.pair_chunking import RowLosses, policy_rows_needed, split_rows

    model.zero_grad()
    rows = split_rows(b)
    needed = policy_rows_needed(b, kind)
    known = torch.full((len(rows),), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        for r in needed:
            pred = _forward(model, rows[r])
            known[r] = per_sample_velocity_error(
                pred, rows[r].target_BCTHW, rows[r].noisy_frames_BT
            )[0]
    losses = RowLosses(known, e_ref, b, kind, align, z, total_items)
    for r, row in enumerate(rows):
        loss, _ = losses.loss(r, _forward(model, row), row, total_sft)
        loss.backward()
    return _grads(model), losses.terms(), needed


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_per_sample_gradient_equals_the_joint_loss_gradient_float64(megatron_single, kind):
    from mugv_align.config import AlignConfig
    from mugv_dit.lora.adapters import adapters_enabled

    model = _model()
    align = AlignConfig(mode=kind, beta=BETA, sft_weight=SFT_WEIGHT, undesirable_weight=0.7)
    if kind == "dpo":  # two pairs: rows [w1, w2, l1, l2]
        b, items = _batch(4, 2), 2
        sft_rows = [0, 1]
    else:  # three labelled samples
        b, items = _batch(3, 3, desirable=[True, False, True]), 3
        sft_rows = [0, 2]
    with torch.no_grad(), adapters_enabled(model, False):
        e_ref, _ = _errors_and_sse(_forward(model, b), b)
    _, sse_all = _errors_and_sse(_forward(model, b).detach(), b)
    total_sft = float(sum(b.noisy_frames_BT[r].sum() * 24 * 16 for r in sft_rows)) + 5.0

    # joint: the whole micro-batch, the loss from its definition
    model.zero_grad()
    e, sse = _errors_and_sse(_forward(model, b), b)
    z = None
    if kind == "dpo":
        d = (e[:2] - e_ref[:2]) - (e[2:] - e_ref[2:])
        pref = -F.logsigmoid(-BETA / 2 * d) * b.weight_B
    else:
        z = ((e_ref - e.detach()).mean()).clamp_min(0)
        sign = torch.where(b.desirable_B, 1.0, -1.0).double()
        w_y = torch.where(b.desirable_B, 1.0, 0.7).double()
        pref = w_y * torch.sigmoid(-sign * BETA * ((e_ref - e) - z)) * b.weight_B
    loss = pref.sum() / items + SFT_WEIGHT * sse[sft_rows].sum() / total_sft
    loss.backward()
    joint = _grads(model)
    assert loss.item() > 0

    per, terms, needed = _per_sample_grads(model, b, kind, align, z, e_ref, items, total_sft)
    assert needed == ([2, 3] if kind == "dpo" else [0, 1, 2])  # DPO: the losers' only
    torch.testing.assert_close(terms.pref, pref.detach(), rtol=1e-12, atol=0)
    assert terms.sft_rows.nonzero().flatten().tolist() == sft_rows
    scale = max(g.abs().max().item() for g in joint.values())
    assert scale > 1e-6
    for name, g in joint.items():
        torch.testing.assert_close(per[name], g, rtol=0, atol=1e-12 * scale, msg=name)
    assert torch.allclose(sse_all, sse.detach())  # the no-grad forward repeats the grad one


def test_split_rows_keeps_each_rows_item(megatron_single):
    from mugv_align.pair_chunking import split_rows

    b = _batch(4, 2)
    rows = split_rows(b)
    assert [r.ids for r in rows] == [["item0"], ["item1"], ["item0"], ["item1"]]
    assert [float(r.weight_B) for r in rows] == [1.0, 0.5, 1.0, 0.5]
    for k, r in enumerate(rows):
        assert r.latent_shape == (1, 24, 3, 4, 4)
        assert torch.equal(r.noisy_BCTHW[0], b.noisy_BCTHW[k])
        assert torch.equal(r.texts[0], b.texts[k])


def _cfg(task, tmp_path, name, **align):
    """LoRA-DPO, two steps; Adam's eps 1 makes the update ~ lr * grad (continuous in the
    gradient: at eps 1e-8 the first update is lr * sign(grad), which rounding can flip)."""
    root = task["root"]
    return write_config(
        tmp_path / f"{name}.yaml",
        tmp_path / name,
        steps=2,
        lr=1.0,
        align={
            "mode": "dpo",
            "preference": [{"path": str(root / "dpo_train")}],
            "beta": 20.0,
            "items_per_micro_batch": 4,
            "ema_sigma_rels": [],
            **align,
        },
        train={"init_from": str(root / "init"), "adam_eps": 1.0},
        lora=LORA,
    )


def test_per_sample_lora_dpo_run_equals_joint(task, tmp_path):
    """Two steps of LoRA-DPO, joint vs per_sample pair chunking (fp32, CPU): same losses,
    metrics and grad norms, same adapters (to fp32 rounding), the same base."""
    logs, state, _, _ = _run(_cfg(task, tmp_path, "joint"))
    p_logs, p_state, _, _ = _run(_cfg(task, tmp_path, "per", pair_chunking="per_sample"))
    assert len(_metrics(tmp_path / "per")) == 2
    keys = ("loss", "pref_loss", "reward_margin", "mean_error_gap", "sft_loss", "grad_norm")
    for a, b in zip(logs, p_logs, strict=True):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    assert logs[1]["reward_margin"] != 0.0  # the adapters moved
    for k, v in state.items():
        torch.testing.assert_close(p_state[k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_per_sample_refuses_lora_dropout(task, tmp_path):
    from mugv_align.config import load_align_config

    cfg = write_config(
        tmp_path / "c.yaml",
        tmp_path / "out",
        steps=1,
        align={
            "mode": "dpo",
            "preference": [{"path": str(task["root"] / "dpo_train")}],
            "pair_chunking": "per_sample",
        },
        lora={**LORA, "dropout": 0.1},
    )
    with pytest.raises(ValueError, match="pair_chunking=per_sample with lora.dropout"):
        load_align_config(cfg)
