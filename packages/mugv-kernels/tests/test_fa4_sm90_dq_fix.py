"""The FlashAttention-4 SM90 dq fix on CPU: the source transform (on a stand-in of the b36
function with the same anchors), its refusals, and the head-dim policy it switches. The fix
itself is checked against float64 on a Hopper GPU (mugv-dit tests/test_gpu_fa4.py) and in
docs/benchmarks/kernels/fa4-sm90-dq/."""

from __future__ import annotations

import hashlib
import itertools
import pathlib
import random
import types

import pytest
import torch
from mugv_kernels import attention as ab
from mugv_kernels import fa4_accum_layout as lay
from mugv_kernels import fa4_sm90_dq_fix as fix

# A stand-in for interface._flash_attn_bwd: the anchors of the b36 source (the head-dim rounding,
# the varlen dq_accum allocation, three postprocess calls); `torch` is passed in (a fake).
STAND_IN = """import os

def _flash_attn_bwd(head_dim, arch, dKV_swapAB, torch, varlen=True):
    # Keep accumulator allocation, zeroing, and readback aligned with SM90's swapped MMA.
    hdim_multiple_of = 64 if arch // 10 == 9 and dKV_swapAB else 32
    head_dim_rounded = (head_dim + hdim_multiple_of - 1) // hdim_multiple_of * hdim_multiple_of
    num_head, total_q_rounded_padded, device = 2, 3, None
    if not varlen:
        dq_accum = torch.empty(num_head, total_q_rounded_padded * head_dim_rounded)
    else:
        dq_accum = (
            None
            if False
            else torch.empty(
                num_head, total_q_rounded_padded * head_dim_rounded, dtype=torch.float32, device=device
            )
        )
    calls = []
    calls.append(("pre", dict(hdim_multiple_of=hdim_multiple_of,)))
    # Postprocess: convert dq_accum from float32 to dq in bf16/fp16
    calls.append(("dq", dict(hdim_multiple_of=hdim_multiple_of,)))
    calls.append(("dk", dict(hdim_multiple_of=hdim_multiple_of,)))
    calls.append(("dv", dict(hdim_multiple_of=hdim_multiple_of,)))
    return head_dim_rounded, dq_accum, calls
"""
FAKE_TORCH = types.SimpleNamespace(
    empty=lambda *shape, **kw: ("empty", shape), zeros=lambda *shape, **kw: ("zeros", shape),
    float32="float32",
)  # fmt: skip


def _stand_in_source() -> str:
    src, _ = fix._function_source(STAND_IN)
    return src


def _run(src: str, **kw):
    scope: dict = {}
    exec(compile(src, "<stand-in>", "exec"), scope)
    return scope["_flash_attn_bwd"](torch=FAKE_TORCH, **kw)


def _stand_in_hash(monkeypatch):
    monkeypatch.setattr(fix, "FUNC_SHA256", hashlib.sha256(_stand_in_source().encode()).hexdigest())


def test_transform_gives_the_postprocess_the_kernels_rounding(monkeypatch):
    _stand_in_hash(monkeypatch)
    new_src, lineno = fix.patched_source(STAND_IN)
    assert lineno == 3
    # written from the defect's description: SM90 kernel rounds head_dim to 16 (64 when
    # dKV_swapAB), the postprocess must read with that; allocation keeps the 32-rounding.
    for head_dim, swap, want_post in [(72, False, 16), (80, False, 16), (96, True, 64)]:
        rounded, _, calls = _run(new_src, head_dim=head_dim, arch=90, dKV_swapAB=swap)
        old_rounded, _, old_calls = _run(
            _stand_in_source(), head_dim=head_dim, arch=90, dKV_swapAB=swap
        )
        assert rounded == old_rounded  # allocation unchanged
        assert calls[0] == old_calls[0]  # preprocess unchanged
        assert [c[1]["hdim_multiple_of"] for c in calls[1:]] == [want_post] * 3
    # off SM90 nothing changes
    _, _, calls = _run(new_src, head_dim=72, arch=100, dKV_swapAB=False)
    assert [c[1]["hdim_multiple_of"] for c in calls] == [32] * 4


@pytest.mark.parametrize(
    ("head_dim", "arch", "swap", "varlen", "want"),
    [
        (72, 90, False, True, "zeros"),  # 96-wide zeroing, 80-wide writes: holes (see model)
        (80, 90, False, True, "zeros"),
        (48, 90, False, True, "zeros"),
        (96, 90, False, True, "empty"),  # both 96: the preprocess zeroes what is written
        (64, 90, False, True, "empty"),
        (192, 90, True, True, "empty"),  # dKV_swapAB: 64 and 64
        (72, 100, False, True, "empty"),  # off SM90 untouched
        (72, 90, False, False, "empty"),  # dense: per (batch, head) from row 0, no holes
    ],
)
def test_transform_zeroes_the_varlen_accumulator_where_layouts_differ(
    monkeypatch, head_dim, arch, swap, varlen, want
):
    _stand_in_hash(monkeypatch)
    new_src, _ = fix.patched_source(STAND_IN)
    _, (alloc, shape), _ = _run(
        new_src, head_dim=head_dim, arch=arch, dKV_swapAB=swap, varlen=varlen
    )
    _, (_, old_shape), _ = _run(
        _stand_in_source(), head_dim=head_dim, arch=arch, dKV_swapAB=swap, varlen=varlen
    )
    assert (alloc, shape) == (want, old_shape)
    dense_only, _ = fix.patched_source(STAND_IN, zero_varlen_accum=False)
    _, (alloc, _), calls = _run(dense_only, head_dim=72, arch=90, dKV_swapAB=False)
    assert alloc == "empty" and calls[1][1]["hdim_multiple_of"] == 16


def test_transform_refuses_without_the_varlen_anchor(monkeypatch):
    text = STAND_IN.replace("            else torch.empty(\n", "            else torch.zeros(\n")
    src, _ = fix._function_source(text)
    monkeypatch.setattr(fix, "FUNC_SHA256", hashlib.sha256(src.encode()).hexdigest())
    with pytest.raises(fix.FA4PatchError, match="anchors not found exactly once"):
        fix.patched_source(text)


def test_the_upstream_diff_in_docs_is_the_transform():
    """docs/benchmarks/kernels/fa4-sm90-dq/fa4_sm90_dq.patch (made with diff -u from the b36
    wheel) removes and adds exactly the lines the transform replaces."""
    root = pathlib.Path(__file__).resolve().parents[3]
    patch = (root / "docs/benchmarks/kernels/fa4-sm90-dq/fa4_sm90_dq.patch").read_text()
    body = [ln for ln in patch.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    removed = [ln[1:] for ln in body if ln.startswith("-")]
    added = [ln[1:] for ln in body if ln.startswith("+")]
    new_rounding = fix._NEW_ROUNDING[len(fix._OLD_ROUNDING) :].splitlines()
    varlen_old = fix._OLD_VARLEN_ALLOC.splitlines()[:1]
    varlen_new = fix._NEW_VARLEN_ALLOC.splitlines()[:-1]
    assert removed == varlen_old + [" " * 12 + fix._OLD_KW] + [" " * 16 + fix._OLD_KW] * 2
    assert added[: len(new_rounding)] == new_rounding
    assert added[len(new_rounding) : len(new_rounding) + len(varlen_new)] == varlen_new
    assert [a.strip() for a in added[len(new_rounding) + len(varlen_new) :]] == [fix._NEW_KW] * 3


def test_transform_refuses_any_other_source():
    with pytest.raises(fix.FA4PatchError, match="is not the flash-attn-4 4.0.0b36 one"):
        fix.patched_source(STAND_IN)  # the real b36 hash does not match the stand-in
    with pytest.raises(fix.FA4PatchError, match="no top-level function"):
        fix.patched_source("def other():\n    pass\n")


def test_apply_refuses_without_flash_attn_4_installed(monkeypatch):
    def missing(name):
        raise fix.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(fix.importlib.metadata, "version", missing)
    with pytest.raises(fix.FA4PatchError, match="not installed"):
        fix.apply()
    monkeypatch.setattr(fix.importlib.metadata, "version", lambda name: "4.0.0b40")
    with pytest.raises(fix.FA4PatchError, match="4.0.0b40 installed; this fix is for 4.0.0b36"):
        fix.apply()


@pytest.mark.parametrize(
    ("applied", "want"),
    [
        (True, {64: 64, 72: 80, 80: 80, 88: 88, 96: 96, 100: 128}),
        (False, {64: 64, 72: 96, 80: 96, 88: 88, 96: 96, 100: 128}),
    ],
)
def test_backward_head_dim_policy_follows_the_fix(monkeypatch, applied, want):
    monkeypatch.setattr(fix, "is_applied", lambda: applied)
    assert {d: ab.fa4_padded_head_dim(d) for d in want} == want
    assert ab.fa4_head_dim(72, needs_backward=True) == want[72]
    assert ab.fa4_head_dim(72, needs_backward=False) == 72  # forward: exact unpadded


# ------------------------------------------------------------------ the accumulator model
def _rel(got, true) -> float:
    return float((got - true).norm() / true.norm())


def test_model_offsets_of_the_self_check_case_by_hand():
    """Our varlen self-check: 2 sequences of 320 queries at head dim 72 -> 80, tile_m 64.
    By hand: sequence 1 starts at row (320 + 64) // 64 * 64 = 384; the preprocess zeroes
    floats [0, 320*96) and [384*96, 704*96); the kernel adds sequence 1 at [384*80, 704*80) =
    [30720, 56320), of which [320*96, 384*96) = [30720, 36864), 6144 floats, is not zeroed."""
    cu = [0, 320, 640]
    assert lay.sm90_tile_m(72) == lay.sm90_tile_m(80) == 64
    assert lay.padded_offsets(cu, 64) == [0, 384]
    dense = lay.sm90_layout(72, "dense", varlen=True)
    assert (dense.width_alloc, dense.width_write, dense.width_read) == (96, 80, 80)
    # (total_q + (B + 1) * 64 - 1) // 64 * 64 = 831 // 64 * 64 = 768 rows of 96 per head
    assert lay.accum_floats(cu, dense) == 768 * 96
    assert lay.varlen_dq_accum_numel(cu, 2, 72) == 2 * 768 * 96
    assert lay.dense_dq_accum_numel(2, 320, 2, 80) == 2 * 2 * 320 * 96
    assert lay.spans(cu, 64, 96) == [(0, 30720), (36864, 67584)]
    assert lay.spans(cu, 64, 80) == [(0, 25600), (30720, 56320)]
    assert lay.unzeroed_written(cu, dense) == 6144
    assert lay.unzeroed_written(cu, lay.sm90_layout(72, "dense+varlen", varlen=True)) == 0
    assert lay.holes_after(cu, 64) == [0]


def _random_cu(rng: random.Random) -> list[int]:
    lengths = [
        rng.choice([rng.randint(1, 300), 64 * rng.randint(1, 4)]) for _ in range(rng.randint(1, 5))
    ]
    return [0, *itertools.accumulate(lengths)]


CASES = [
    [0, 320, 640],  # the self-check (B=2 x 320): hole after sequence 0
    [0, 300, 1000, 1513],  # the 04:03 run's varlen case: hole after sequence 1
    [0, 1000],  # one sequence: like dense
    [0, 50, 69],  # text-like keys as queries
    [0, 64, 128, 192],  # every length a multiple of tile_m
]


@pytest.mark.parametrize("cu", CASES + [_random_cu(random.Random(s)) for s in range(5)])
def test_model_dq_by_fix(cu):
    """float64 model of the three kernels' accumulator traffic (preprocess zeroes, kernel adds,
    postprocess reads) on NaN-filled memory: b36 wrong at 72 (rel err ~1.2, like the measured
    1.26-1.35), exact at 64/96 (equal widths); the dense fix alone wrong exactly when the kernel writes into
    an unzeroed hole (and right on zero-filled memory, as measured on a fresh process);
    the whole fix exact everywhere."""
    for hd, f in ((64, "none"), (96, "dense")):
        got, true = lay.simulate_dq(cu, hd, lay.sm90_layout(hd, f, varlen=True))
        assert _rel(got, true) < 1e-12, (hd, f)
    got, true = lay.simulate_dq(cu, 72, lay.sm90_layout(72, "none", varlen=True))
    one_block = len(cu) == 2 and cu[1] <= 64
    assert one_block or _rel(got, true) > 0.5
    dense = lay.sm90_layout(72, "dense", varlen=True)
    got, true = lay.simulate_dq(cu, 72, dense)
    holes = lay.unzeroed_written(cu, dense)
    assert (not bool(torch.isfinite(got).all())) == (holes > 0), (cu, holes)
    got, true = lay.simulate_dq(cu, 72, dense, fill=0.0)
    assert _rel(got, true) < 1e-12
    for hd in (48, 80):
        got, true = lay.simulate_dq(cu, hd, lay.sm90_layout(hd, "dense+varlen", varlen=True))
        assert _rel(got, true) < 1e-12, hd
    assert cu not in CASES[:2] or holes > 0


def test_model_holes_closed_form_and_dit_shapes():
    """holes_after's closed form agrees with the spans; the DiT's cross-attention queries
    (one segment of N video tokens per sample) at N = 12,880 have no hole for B <= 4 (dq was
    right there even with the dense fix alone), one from B = 5; N = 320 from B = 2."""
    rng = random.Random(0)
    for _ in range(300):
        cu, m = _random_cu(rng), rng.choice([64, 80, 128])
        pos = lay.padded_offsets(cu, m)
        by_spans = [
            b
            for b in range(len(pos) - 1)
            if pos[b + 1] > pos[b] + lay.round_up(cu[b + 1] - cu[b], m)
        ]
        assert lay.holes_after(cu, m) == by_spans
    dense = lay.sm90_layout(72, "dense", varlen=True)
    # 12880 % 64 = 16: cu[b] % 64 = 16 b, 48 + 16 >= 64 after sequence 3; 1000 % 64 = 40: 40 + 40
    for n, first_bad_batch in ((12880, 5), (320, 2), (1000, 3)):
        ok = [lay.unzeroed_written([i * n for i in range(b + 1)], dense) == 0 for b in range(1, 6)]
        assert ok.index(False) + 1 == first_bad_batch, (n, ok)
