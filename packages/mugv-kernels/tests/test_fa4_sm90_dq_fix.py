"""The FlashAttention-4 SM90 dq fix on CPU: the source transform (on a stand-in of the b36
function with the same anchors), its refusals, and the head-dim policy it switches. The fix
itself is checked against float64 on a Hopper GPU (mugv-dit tests/test_gpu_fa4.py) and in
docs/benchmarks/kernels/fa4-sm90-dq/."""

from __future__ import annotations

import hashlib

import pytest
from mugv_kernels import attention as ab
from mugv_kernels import fa4_sm90_dq_fix as fix

# A stand-in for interface._flash_attn_bwd: the anchors of the b36 source, three postprocess calls.
STAND_IN = """import os

def _flash_attn_bwd(head_dim, arch, dKV_swapAB):
    # Keep accumulator allocation, zeroing, and readback aligned with SM90's swapped MMA.
    hdim_multiple_of = 64 if arch // 10 == 9 and dKV_swapAB else 32
    head_dim_rounded = (head_dim + hdim_multiple_of - 1) // hdim_multiple_of * hdim_multiple_of
    calls = []
    calls.append(("pre", dict(hdim_multiple_of=hdim_multiple_of,)))
    # Postprocess: convert dq_accum from float32 to dq in bf16/fp16
    calls.append(("dq", dict(hdim_multiple_of=hdim_multiple_of,)))
    calls.append(("dk", dict(hdim_multiple_of=hdim_multiple_of,)))
    calls.append(("dv", dict(hdim_multiple_of=hdim_multiple_of,)))
    return head_dim_rounded, calls
"""


def _stand_in_source() -> str:
    src, _ = fix._function_source(STAND_IN)
    return src


def _run(src: str, **kw):
    scope: dict = {}
    exec(compile(src, "<stand-in>", "exec"), scope)
    return scope["_flash_attn_bwd"](**kw)


def test_transform_gives_the_postprocess_the_kernels_rounding(monkeypatch):
    monkeypatch.setattr(fix, "FUNC_SHA256", hashlib.sha256(_stand_in_source().encode()).hexdigest())
    new_src, lineno = fix.patched_source(STAND_IN)
    assert lineno == 3
    # written from the defect's description: SM90 kernel rounds head_dim to 16 (64 when
    # dKV_swapAB), the postprocess must read with that; allocation keeps the 32-rounding.
    for head_dim, swap, want_post in [(72, False, 16), (80, False, 16), (96, True, 64)]:
        rounded, calls = _run(new_src, head_dim=head_dim, arch=90, dKV_swapAB=swap)
        old_rounded, old_calls = _run(
            _stand_in_source(), head_dim=head_dim, arch=90, dKV_swapAB=swap
        )
        assert rounded == old_rounded  # allocation unchanged
        assert calls[0] == old_calls[0]  # preprocess unchanged
        assert [c[1]["hdim_multiple_of"] for c in calls[1:]] == [want_post] * 3
    # off SM90 nothing changes
    _, calls = _run(new_src, head_dim=72, arch=100, dKV_swapAB=False)
    assert [c[1]["hdim_multiple_of"] for c in calls] == [32] * 4


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
