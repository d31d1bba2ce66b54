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

Applying
--------
``apply()`` rewrites ``flash_attn.cute.interface._flash_attn_bwd`` from its source with that diff
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
    "    # blocks. Reading them as 96-wide blocks gave a wrong dQ. Allocation and zeroing above keep\n"
    "    # the 32-rounding: they cover the 16-rounded layout.\n"
    "    hdim_multiple_of_post = (64 if dKV_swapAB else 16) if arch // 10 == 9 else hdim_multiple_of\n"
)
_POST_START = "    # Postprocess: convert dq_accum from float32 to dq in bf16/fp16\n"
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


def patched_source(module_text: str) -> tuple[str, int]:
    """(patched source of _flash_attn_bwd, its first line number) from interface.py's text."""
    src, lineno = _function_source(module_text)
    digest = hashlib.sha256(src.encode()).hexdigest()
    if digest != FUNC_SHA256:
        raise FA4PatchError(
            f"{FUNC_NAME} source sha256 {digest[:16]}... is not the flash-attn-4 {FA4_VERSION} one"
        )
    if src.count(_OLD_ROUNDING) != 1 or src.count(_POST_START) != 1:
        raise FA4PatchError("patch anchors not found exactly once")
    src = src.replace(_OLD_ROUNDING, _NEW_ROUNDING)
    head, tail = src.split(_POST_START)
    if tail.count(_OLD_KW) != 3:
        raise FA4PatchError("expected three postprocess calls")
    return head + _POST_START + tail.replace(_OLD_KW, _NEW_KW), lineno


def is_applied() -> bool:
    mod = sys.modules.get("flash_attn.cute.interface")
    return bool(mod is not None and getattr(mod, MARKER, False))


def apply() -> bool:
    """Patch flash_attn.cute.interface._flash_attn_bwd in place. True once applied (idempotent).

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
    new_src, lineno = patched_source(text)
    old_fn = getattr(interface, FUNC_NAME)
    # Keep line numbers of the function's head aligned with the file in tracebacks.
    code = compile("\n" * (lineno - 1) + new_src, interface.__file__, "exec")
    exec(code, interface.__dict__)  # rebinds interface._flash_attn_bwd
    new_fn = getattr(interface, FUNC_NAME)
    # The main-kernel cache stays valid (its kernels are unchanged); the postprocess cache is
    # keyed by hdim_multiple_of, so the 16-rounded postprocess compiles under new keys.
    new_fn.compile_cache = old_fn.compile_cache
    new_fn.__mugv_unpatched__ = old_fn
    setattr(interface, MARKER, True)
    return True
