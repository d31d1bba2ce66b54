"""Import-time fix for flash-attn-4 4.0.0b36 (applied by :func:`mugv_kernels.attention.fa4_functions`): wrong dQ from the SM90 (Hopper) backward at head
dims 72 and 80 (and 40/48; and, with GQA, wrong dK/dV there too).

The defect
----------
``flash_attn/cute/interface.py``, ``_flash_attn_bwd`` (line 2609 of the b36 wheel)::

    hdim_multiple_of = 64 if arch // 10 == 9 and dKV_swapAB else 32

This value goes to the dQ postprocess (``FlashAttentionBackwardPostprocess``, and to the GQA dK/dV
postprocesses), which reads the float32 dQ accumulator in blocks of
``tile_m * tile_hdim`` floats, ``tile_hdim = round_up(head_dim, hdim_multiple_of)``.
The SM90 main kernel that *writes* that accumulator, ``FlashAttentionBackwardSm90.__init__``
(``flash_bwd_sm90.py`` line 80), rounds differently::

    hdim_multiple_of = 64 if dKV_swapAB else 16
    self.tile_hdim = int(math.ceil(head_dim / hdim_multiple_of) * hdim_multiple_of)

and ``dQaccum_store`` atomically adds each m-block's (tile_m x tile_hdim) WGMMA accumulator, in
fragment order, at offset ``m_block * tile_m * tile_hdim`` (``padded_offset_q * tile_hdim`` with
varlen). The two roundings agree whenever head_dim rounds to the same multiple of 16 and of 32
(64, 88, 96, 128, ...) and disagree at 72 and 80 (kernel 80, postprocess 96) and 40/48 (48 vs 64):
there the postprocess reads every block but the first at the wrong offset and decodes the fragment
order of a 96-wide MMA tile from data laid out as an 80-wide one, so dQ is garbage (relative
error ~1). dK/dV are stored straight from registers (no accumulator) unless GQA, so they stay
right; out is unaffected. The tile configuration is irrelevant (every SM90 config for hd <= 96 has
SdP/dKV unswapped), which is what was measured.

The fix
-------
Give the postprocess the kernel's rounding (16, or 64 with dKV_swapAB, on SM90) via a separate
``hdim_multiple_of_post``. The accumulator allocation and the preprocess (which zeroes it) keep the
32-rounding on purpose: a 96-per-row buffer covers the 80-per-row layout in full (per-head strides
come from the tensor, in-head offsets from the kernel), and the preprocess's O/dO row-sum copy
would tile 128 rows over its 64-row block at an 80-wide head dim with 256 threads (writing dPsum
rows past its block). The postprocess at tile_m 64 / 128 threads (``dQ_single_wg``, the config FA4
picks for 64 < hd <= 96) tiles exactly 64 rows at an 80-wide head dim, and the postprocess kernels
are compiled per ``hdim_multiple_of`` (it is in their compile key, also in the persistent JIT
cache), so no stale kernel is reused. Other architectures are untouched (the new value equals the
old one off SM90). Head dims 97..127 that are not multiples of 32 (e.g. 104, 112) stay unsupported
on SM90 with or without this fix.

The same change as a unified diff against the wheel, with the reproducer and the measured errors
and timings, is in ``docs/benchmarks/kernels/fa4-sm90-dq/`` (upstream-ready).

The varlen accumulator (found 2026-12-07)
-----------------------------------------
With ``cu_seqlens_q`` the dQ accumulator is one buffer per head, each sequence ``b`` starting
at row ``padded_offset_q(b) = (cu_seqlens_q[b] + b * tile_m) // tile_m * tile_m``, allocated
with ``torch.empty``. The preprocess zeroes sequence ``b``'s ``ceil(len_b / tile_m)`` blocks
*in the 32-rounded layout* (floats ``[po_b * 96, (po_b + R_b) * 96)`` at head dim 72/80),
the kernel accumulates them in its 16-rounded one (``[po_b * 80, (po_b + R_b) * 80)``). Dense
attention restarts at 0 for every (batch, head), so the 96-wide zeroing covers the 80-wide
writes. With varlen the zeroed spans have a hole of one tile (``tile_m * 96`` floats) before
sequence ``b + 1`` wherever ``padded_offset_q`` jumps a tile (``len_b % tile_m == 0``, or
``cu_seqlens_q[b] % tile_m + len_b % tile_m >= tile_m``), and sequence ``b + 1``'s 80-wide
writes (which start lower, at ``po * 80``) land in that hole: those rows of dQ start from
whatever the allocator's memory held.
So dq was right on fresh (zero) memory -- the 04:03 run's 300+700+513 case -- and wrong on
reused memory: our self-check (2 x 320 queries, run after the dense check freed its buffers)
measured dq rel err 0.165 on an H100 (docs/benchmarks/align/h100_2026-12-07_lora_per_sample).
The fix allocates the varlen dQ accumulator with ``torch.zeros`` whenever the postprocess's
rounded head dim differs from the allocation's (48, 72, 80 on SM90). The preprocess still zeroes
its spans: one extra memset of ``heads * (total_q + (batch + 1) * tile_m) * 96 * 4`` bytes. The
GQA dK/dV accumulators are ``torch.zeros`` already. :mod:`mugv_kernels.fa4_accum_layout` is a
float64 model of these offsets (tests/test_fa4_sm90_dq_fix.py runs it for many ``cu_seqlens``).

Applying
--------
``apply()`` rewrites ``flash_attn.cute.interface._flash_attn_bwd`` from its source with that diff
(both parts; ``apply(zero_varlen_accum=False)`` leaves out the varlen part, for the reproducer)
and rebinds it in the module (the autograd functions look it up there at call time). It refuses
(``FA4PatchError``) unless the installed distribution is flash-attn-4 == 4.0.0b36 *and* the
function's source hashes to the b36 text; it is idempotent. Call it once after importing
``flash_attn.cute`` and before the first backward (it only changes host code, so calling it
later is also fine).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import sys

FA4_DIST = "flash-attn-4"
FA4_VERSION = "4.0.0b36"
FUNC_NAME = "_flash_attn_bwd"
# sha256 of the source lines of interface._flash_attn_bwd in the 4.0.0b36 wheel
FUNC_SHA256 = "592684deacf304f31f29a33d31831ecb4ad44b49998d1d612e4a83bc339961b0"
MARKER = "_mugv_sm90_dq_fix_applied"

_OLD_ROUNDING = (
    "    hdim_multiple_of = 64 if arch // 10 == 9 and dKV_swapAB else 32\n"
    "    head_dim_rounded = (head_dim + hdim_multiple_of - 1) // hdim_multiple_of * hdim_multiple_of\n"
)
_NEW_ROUNDING = _OLD_ROUNDING + (
    "    # The postprocess must read the accumulators with the main kernel's head-dim tile:\n"
    "    # FlashAttentionBackwardSm90 rounds head_dim to a multiple of 16 (64 with dKV_swapAB), e.g.\n"
    "    # 72 and 80 -> 80, and lays dQaccum (and the GQA dK/dV accum) out as (tile_m * 80)-float\n"
    "    # blocks. Reading them as 96-wide blocks gave a wrong dQ. Allocation and zeroing keep the\n"
    "    # 32-rounding: they cover the 16-rounded layout (varlen: see dq_accum below).\n"
    "    hdim_multiple_of_post = (64 if dKV_swapAB else 16) if arch // 10 == 9 else hdim_multiple_of\n"
    "    head_dim_rounded_post = -(-head_dim // hdim_multiple_of_post) * hdim_multiple_of_post\n"
)
_POST_START = "    # Postprocess: convert dq_accum from float32 to dq in bf16/fp16\n"
# the varlen dQ accumulator's allocation (the dense one is the first torch.empty( before it)
_OLD_VARLEN_ALLOC = (
    "            else torch.empty(\n"
    "                num_head, total_q_rounded_padded * head_dim_rounded, dtype=torch.float32,"
)
_NEW_VARLEN_ALLOC = (
    "            # Varlen: the preprocess zeroes each sequence's rows 32-rounded, the kernel adds\n"
    "            # them 16-rounded; where padded_offset_q jumps a tile, part of the next\n"
    "            # sequence's rows lies in an unzeroed hole. Start from zeros.\n"
    "            else (torch.zeros if head_dim_rounded_post != head_dim_rounded else torch.empty)(\n"
    "                num_head, total_q_rounded_padded * head_dim_rounded, dtype=torch.float32,"
)
_OLD_KW = "hdim_multiple_of=hdim_multiple_of,"
_NEW_KW = "hdim_multiple_of=hdim_multiple_of_post,"


class FA4PatchError(RuntimeError):
    """The installed flash-attn-4 is not the one this fix was written for."""


def _function_source(module_text: str, name: str = FUNC_NAME) -> tuple[str, int]:
    tree = ast.parse(module_text)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            if node.decorator_list:
                raise FA4PatchError(f"{name} is decorated; not the b36 source")
            lines = module_text.splitlines(keepends=True)
            return "".join(lines[node.lineno - 1 : node.end_lineno]), node.lineno
    raise FA4PatchError(f"no top-level function {name}")


def patched_source(module_text: str, *, zero_varlen_accum: bool = True) -> tuple[str, int]:
    """(patched source of _flash_attn_bwd, its first line number) from interface.py's text.

    ``zero_varlen_accum=False`` leaves out the varlen accumulator part (the dense fix alone, as
    applied before 2026-12-07: kept for the reproducer, which shows the varlen defect with it)."""
    src, lineno = _function_source(module_text)
    digest = hashlib.sha256(src.encode()).hexdigest()
    if digest != FUNC_SHA256:
        raise FA4PatchError(
            f"{FUNC_NAME} source sha256 {digest[:16]}... is not the flash-attn-4 {FA4_VERSION} one"
        )
    anchors = (_OLD_ROUNDING, _POST_START, _OLD_VARLEN_ALLOC)
    if any(src.count(a) != 1 for a in anchors):
        raise FA4PatchError("patch anchors not found exactly once")
    if src.index(_OLD_VARLEN_ALLOC) < src.index(_OLD_ROUNDING):
        raise FA4PatchError("varlen dq_accum allocation comes before the head-dim rounding")
    src = src.replace(_OLD_ROUNDING, _NEW_ROUNDING)
    if zero_varlen_accum:
        src = src.replace(_OLD_VARLEN_ALLOC, _NEW_VARLEN_ALLOC)
    head, tail = src.split(_POST_START)
    if tail.count(_OLD_KW) != 3:
        raise FA4PatchError("expected three postprocess calls")
    return head + _POST_START + tail.replace(_OLD_KW, _NEW_KW), lineno


def applied_parts() -> str | None:
    """``"dense+varlen"`` (the whole fix), ``"dense"`` (``apply(zero_varlen_accum=False)``) or
    None (not applied, or FA4 not imported)."""
    mod = sys.modules.get("flash_attn.cute.interface")
    parts = getattr(mod, MARKER, None) if mod is not None else None
    return parts or None


def is_applied() -> bool:
    """The dense part is applied (FA4's backward is exact at head dim 80): see applied_parts()."""
    return applied_parts() is not None


def apply(*, zero_varlen_accum: bool = True) -> bool:
    """Patch flash_attn.cute.interface._flash_attn_bwd in place. True once applied (idempotent;
    the first call in a process decides ``zero_varlen_accum``).

    Raises FA4PatchError on any flash-attn-4 other than 4.0.0b36 (caller should then fall back,
    e.g. to zero-padding the head dim to 96).
    """
    try:
        version = importlib.metadata.version(FA4_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise FA4PatchError(f"{FA4_DIST} is not installed") from e
    if version != FA4_VERSION:
        raise FA4PatchError(f"{FA4_DIST} {version} installed; this fix is for {FA4_VERSION} only")
    from flash_attn.cute import interface  # imports cutlass: only after the version check

    if getattr(interface, MARKER, False):
        return True
    with open(interface.__file__, encoding="utf-8") as f:
        text = f.read()
    new_src, lineno = patched_source(text, zero_varlen_accum=zero_varlen_accum)
    old_fn = getattr(interface, FUNC_NAME)
    # Keep line numbers of the function's head aligned with the file in tracebacks.
    code = compile("\n" * (lineno - 1) + new_src, interface.__file__, "exec")
    exec(code, interface.__dict__)  # rebinds interface._flash_attn_bwd
    new_fn = getattr(interface, FUNC_NAME)
    # The main-kernel cache stays valid (its kernels are unchanged); the postprocess cache is
    # keyed by hdim_multiple_of, so the 16-rounded postprocess compiles under new keys.
    new_fn.compile_cache = old_fn.compile_cache
    new_fn.__mugv_unpatched__ = old_fn
    setattr(interface, MARKER, "dense+varlen" if zero_varlen_accum else "dense")
    return True
