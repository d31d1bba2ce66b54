"""Attention kernels behind one dispatch point, for training (mugv-dit) and inference (mugv-infer).

Backends (:data:`BACKENDS`):

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (cuDNN / flash / math);
* ``flash``: flash-attn 2 (``flash_attn.flash_attn_func`` / ``flash_attn_varlen_func``);
* ``fa4``: FlashAttention-4 (package ``flash-attn-4``, module ``flash_attn.cute``), Hopper;
* ``auto``: ``fa4`` on a Hopper GPU when it imports, takes the head dim and passes a start-up
  self-check of the path (dense self-attention or varlen cross-attention) against fp32 SDPA
  (:func:`fa4_self_check`, once per process); else ``flash`` when flash-attn 2 is installed;
  else ``sdpa``. CPU tensors and dtypes other than bf16 / fp16 take ``sdpa``.

Libraries are detected by what they export, not by their top-level name: installing
flash-attn-4 creates a ``flash_attn`` namespace package without flash-attn 2's functions.

The one difference between training and inference is explicit: ``needs_backward``.
FlashAttention-4 4.0.0b36's SM90 *backward* returns a wrong dq at head dims 72 and 80 (its dQ
postprocess reads the accumulator with a 32-rounded head-dim tile, the kernel writes it
16-rounded); its forward and dk/dv are right. :func:`fa4_functions` applies our fix
(:mod:`mugv_kernels.fa4_sm90_dq_fix`, pinned to 4.0.0b36; it also zeroes the varlen dq
accumulator, which b36 left partly unzeroed there) when it imports FA4; then 80 is exact
too and 72 runs padded to 80 (faster than unpadded 72: FA4's forward is slower at 72). Without
the fix (another FA4 version) 72 is padded to 96 as before. With ``needs_backward=True`` q, k and
v are zero-padded to the next head dim in :func:`fa4_exact_head_dims` with the softmax scale of
the true head dim and the output sliced back: zero channels add nothing to q.k and the extra
output channels (from zero v channels) are dropped, so the result is exact. With ``needs_backward=False`` (inference) FA4's
forward runs unpadded at any head dim that is a multiple of 8 up to 128 (72 included). A head
dim FA4 does not take runs SDPA (``auto``) or raises :class:`AttentionBackendError` (``fa4``).

Cross-attention to text of unequal lengths comes in two forms: keys already packed
(:func:`varlen_cross_attention`, training: the text is a :class:`PackedText`) and padded keys
with a mask (:func:`masked_cross_attention`, inference: SDPA takes the boolean mask, the varlen
kernels take the valid keys gathered with a :class:`PackedText` built once per DiT call).

Kernel calls and the backend choice are opaque to ``torch.compile`` (graph breaks), so
compiled blocks run them eagerly.

Legend: B batch, N query tokens, L key tokens (padded), T packed keys, H heads, D head dim.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mugv_kernels import fa4_accum_layout, fa4_sm90_dq_fix

BACKENDS = ("auto", "sdpa", "flash", "fa4")
PATHS = ("dense", "varlen")
# head dims whose FA4 SM90 forward AND backward match float64 (FA4 4.0.0b36, H200, 2026-12-02)
FA4_EXACT_HEAD_DIMS = (64, 88, 96, 128)
# what other head dims are padded to for a backward: the widths of FA4's own SM90 tiles
FA4_PAD_TARGETS = (64, 96, 128)
# the same with mugv_kernels.fa4_sm90_dq_fix applied (H100, 2026-12-07: dq at 72/80 like cuDNN)
FA4_FIXED_EXACT_HEAD_DIMS = (64, 80, 88, 96, 128)
FA4_FIXED_PAD_TARGETS = (64, 80, 96, 128)
SELF_CHECK_TOLERANCE = 2e-2


class AttentionBackendError(ValueError):
    """An attention backend that is unknown or cannot run here (a user/config error)."""


# ------------------------------------------------------------------ libraries
@functools.cache
def flash_attn2_functions() -> tuple[Callable, Callable] | None:
    """flash-attn 2's ``(flash_attn_func, flash_attn_varlen_func)``, or None."""
    try:
        module = importlib.import_module("flash_attn")
    except ImportError:
        return None
    dense = getattr(module, "flash_attn_func", None)
    varlen = getattr(module, "flash_attn_varlen_func", None)
    return (dense, varlen) if dense is not None and varlen is not None else None


@functools.cache
def fa4_functions() -> tuple[Callable, Callable] | None:
    """FlashAttention-4's ``(flash_attn_func, flash_attn_varlen_func)``, or None."""
    try:
        module = importlib.import_module("flash_attn.cute")
    except Exception:  # ImportError, or a CUDA / CuTe DSL set-up error on import
        return None
    dense = getattr(module, "flash_attn_func", None)
    varlen = getattr(module, "flash_attn_varlen_func", None)
    if dense is None or varlen is None:
        return None
    try:
        fa4_sm90_dq_fix.apply()
    except fa4_sm90_dq_fix.FA4PatchError as e:  # another FA4 version: pad 72 -> 96 as before
        warnings.warn(
            f"FlashAttention-4 SM90 dq fix not applied ({e}); head dim 72 pads to 96",
            stacklevel=2,
        )
    return dense, varlen


def fa4_exact_head_dims() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(exact head dims, pad targets)`` of FA4's backward here: with the dq fix applied
    (:mod:`mugv_kernels.fa4_sm90_dq_fix`) 80 is exact, else only 64/88/96/128."""
    if fa4_sm90_dq_fix.is_applied():
        return FA4_FIXED_EXACT_HEAD_DIMS, FA4_FIXED_PAD_TARGETS
    return FA4_EXACT_HEAD_DIMS, FA4_PAD_TARGETS


def fa4_padded_head_dim(head_dim: int) -> int:
    """Head dim FA4 runs at when a backward follows: ``head_dim`` if exact there, else the
    next exact one (72 -> 80 with the dq fix, 72 -> 96 without)."""
    exact, targets = fa4_exact_head_dims()
    if head_dim in exact:
        return head_dim
    for d in targets:
        if d >= head_dim:
            return d
    raise AttentionBackendError(f"attention backend fa4 supports head dims <= 128, got {head_dim}")


def fa4_head_dim(head_dim: int, *, needs_backward: bool) -> int | None:
    """Head dim FA4 runs ``head_dim`` at, or None when FA4 does not take it: with a backward
    :func:`fa4_padded_head_dim`; forward only, ``head_dim`` itself when it is a multiple of 8
    up to 128 (FA4's forward is exact there)."""
    if needs_backward:
        return fa4_padded_head_dim(head_dim) if head_dim <= fa4_exact_head_dims()[1][-1] else None
    return head_dim if head_dim % 8 == 0 and head_dim <= 128 else None


# ------------------------------------------------------------------ packed text
@dataclass(frozen=True)
class PackedText:
    """Text of unequal lengths packed sample after sample, without padding.

    ``cu_seqlens``: int32 ``[B+1]`` offsets (on the tokens' device); ``max_len``: longest
    sample; ``offsets``: the host copy of ``cu_seqlens``, so that slicing by sample never waits
    for the device. ``tokens_LC``: the packed tokens (:meth:`from_list`), or None when only the
    layout is packed (:meth:`from_mask`); then ``index_T`` holds the flat indices into
    ``[B * L]`` of the valid tokens of a padded ``[B, L, ...]`` tensor, sample-major.
    """

    tokens_LC: torch.Tensor | None
    cu_seqlens: torch.Tensor
    max_len: int
    offsets: tuple[int, ...] = ()
    index_T: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.offsets:
            object.__setattr__(self, "offsets", tuple(int(v) for v in self.cu_seqlens.tolist()))

    @classmethod
    def from_list(cls, items: list[torch.Tensor]) -> PackedText:
        """Pack a list of ``[L_i, C]`` token tensors (each at least one token)."""
        if not items:
            raise ValueError("PackedText needs at least one sample")
        lengths = [int(t.shape[0]) for t in items]
        if min(lengths) <= 0:
            raise ValueError(f"every text must have >= 1 token, got lengths {lengths}")
        cu = torch.zeros(len(items) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
        offsets = tuple(int(v) for v in cu.tolist())
        return cls(torch.cat(items, dim=0), cu.to(items[0].device), max(lengths), offsets)

    @classmethod
    def from_mask(cls, mask_BL: torch.Tensor) -> PackedText:
        """The layout of the valid (True) tokens of a padded batch: one host sync."""
        mask_BL = mask_BL.to(torch.bool)
        cu = F.pad(mask_BL.sum(1).cumsum(0), (1, 0)).to(torch.int32)
        offsets = tuple(int(v) for v in cu.tolist())
        index_T = mask_BL.flatten().nonzero().squeeze(1)
        max_len = max(hi - lo for lo, hi in itertools.pairwise(offsets))
        return cls(None, cu, max_len, offsets, index_T)

    @property
    def lengths(self) -> list[int]:
        return [hi - lo for lo, hi in itertools.pairwise(self.offsets)]

    def split(self) -> list[torch.Tensor]:
        """The packed tokens, one tensor per sample."""
        if self.tokens_LC is None:
            raise ValueError("PackedText.from_mask holds no tokens to split")
        return list(torch.split(self.tokens_LC, self.lengths, dim=0))

    def gather(self, x_BL_: torch.Tensor) -> torch.Tensor:
        """The valid tokens of a padded ``[B, L, ...]`` tensor, packed -> ``[T, ...]``."""
        if self.index_T is None:
            raise ValueError("PackedText.from_list has no mask to gather by")
        return x_BL_.flatten(0, 1).index_select(0, self.index_T)


# ------------------------------------------------------------------ backend choice
def _is_half(x: torch.Tensor) -> bool:
    return x.dtype in (torch.bfloat16, torch.float16)


def _is_hopper(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] == 9


def _cuda_index(x: torch.Tensor) -> int | None:
    """The CUDA device index of ``x``, None when it is not on a CUDA device."""
    if not x.is_cuda:
        return None
    return x.device.index if x.device.index is not None else torch.cuda.current_device()


@functools.cache
def _auto_backend(path: str, device_index: int, head_dim: int, needs_backward: bool) -> str:
    """``auto`` for bf16 / fp16 CUDA tensors (cached per process)."""
    fa4_takes = fa4_head_dim(head_dim, needs_backward=needs_backward) is not None
    fa4_may = _is_hopper(device_index) and fa4_functions() is not None and fa4_takes
    if (
        fa4_may
        and fa4_self_check(path, head_dim, device_index, needs_backward=needs_backward) is None
    ):
        return "fa4"
    if flash_attn2_functions() is not None:
        return "flash"
    return "sdpa"


@torch.compiler.disable  # plain Python (imports, a cached self-check): never traced
def resolve_backend(
    requested: str, x: torch.Tensor, *, path: str = "dense", needs_backward: bool = True
) -> str:
    """The backend that runs ``path`` (``dense`` / ``varlen``) for ``x [..., head_dim]``.

    ``fa4`` / ``flash`` need CUDA tensors and their library (else :class:`AttentionBackendError`);
    for inputs the kernel does not take (not bf16 / fp16, or a head dim FA4 does not take)
    they run SDPA. ``auto``: see the module docstring.
    """
    if requested not in BACKENDS:
        raise AttentionBackendError(
            f"attention backend {requested!r} unknown; choose from {BACKENDS}"
        )
    if path not in PATHS:
        raise ValueError(f"attention path {path!r} unknown; choose from {PATHS}")
    if requested == "sdpa":
        return "sdpa"
    if requested == "flash":
        if flash_attn2_functions() is None or _cuda_index(x) is None:
            raise AttentionBackendError(
                "attention backend 'flash' needs a CUDA tensor and flash-attn 2 "
                "(flash_attn.flash_attn_func); use 'sdpa' or 'auto'"
            )
        return "flash" if _is_half(x) else "sdpa"
    if requested == "fa4":
        if fa4_functions() is None or _cuda_index(x) is None:
            raise AttentionBackendError(
                "attention backend 'fa4' needs a CUDA tensor and the flash-attn-4 package "
                "(flash_attn.cute); use 'sdpa' or 'auto'"
            )
        takes = fa4_head_dim(x.shape[-1], needs_backward=needs_backward) is not None
        return "fa4" if takes and _is_half(x) else "sdpa"
    index = _cuda_index(x)
    if index is None or not _is_half(x):
        return "sdpa"
    return _auto_backend(path, index, x.shape[-1], needs_backward)


# ------------------------------------------------------------------ kernel calls
def _pad_head_dim(x: torch.Tensor, width: int) -> torch.Tensor:
    return x.contiguous() if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


@torch.compiler.disable
def _fa4_call(which: int, q, k, v, needs_backward: bool, **kwargs) -> torch.Tensor:
    """FA4's dense (0) or varlen (1) function at the head dim FA4 runs (zero-padded where a
    backward needs it), with the softmax scale of the true head dim; output sliced back."""
    functions = fa4_functions()
    if functions is None:
        raise AttentionBackendError("attention backend fa4 needs the flash-attn-4 package")
    d = q.shape[-1]
    width = fa4_padded_head_dim(d) if needs_backward else d
    padded = (_pad_head_dim(t, width) for t in (q, k, v))
    out = functions[which](*padded, softmax_scale=d**-0.5, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    return out[..., :d]


def fa4_dense(q_BNHD, k_BNHD, v_BNHD, *, needs_backward: bool = True) -> torch.Tensor:
    """Bidirectional FA4 attention (padded head dim with ``needs_backward``) -> ``[B, N, H, D]``."""
    return _fa4_call(0, q_BNHD, k_BNHD, v_BNHD, needs_backward)


def fa4_varlen(
    q_TQHD, k_TKHD, v_TKHD, cu_q, cu_k, max_q: int, max_k: int, *, needs_backward: bool = True
) -> torch.Tensor:
    """Packed variable-length FA4 attention -> ``[total_q, H, D]``."""
    return _fa4_call(
        1, q_TQHD, k_TKHD, v_TKHD, needs_backward,
        cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
    )  # fmt: skip


@torch.compiler.disable
def _flash_call(which: int, *args) -> torch.Tensor:
    return flash_attn2_functions()[which](*args)


def sdpa(q_BNHD, k_BLHD, v_BLHD, mask_BL: torch.Tensor | None = None) -> torch.Tensor:
    """Torch SDPA on ``[B, N, H, D]`` tensors, keys masked by ``mask_BL`` (True: valid)."""
    attn_mask = None if mask_BL is None else mask_BL[:, None, None, :].to(torch.bool)
    out_BHND = F.scaled_dot_product_attention(
        q_BNHD.transpose(1, 2), k_BLHD.transpose(1, 2), v_BLHD.transpose(1, 2), attn_mask=attn_mask
    )
    return out_BHND.transpose(1, 2)


def _varlen_kernel(chosen, q_BNHD, k_THD, v_THD, text: PackedText, needs_backward: bool):
    """Every sample's queries (one segment each) against its packed keys -> ``[B, N, H, D]``."""
    b, n, h, d = q_BNHD.shape
    cu_q = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=q_BNHD.device)
    cu_k = text.cu_seqlens.to(q_BNHD.device, torch.int32)
    q_TQHD = q_BNHD.reshape(b * n, h, d)
    if chosen == "fa4":
        out = fa4_varlen(
            q_TQHD, k_THD, v_THD, cu_q, cu_k, n, text.max_len, needs_backward=needs_backward
        )
    else:
        out = _flash_call(1, q_TQHD, k_THD, v_THD.contiguous(), cu_q, cu_k, n, text.max_len)
    return out.view(b, n, h, d)


# ------------------------------------------------------------------ public attention
def dense_attention(
    q_BNHD, k_BNHD, v_BNHD, backend: str = "auto", *, needs_backward: bool = True
) -> torch.Tensor:
    """Full bidirectional attention over equal-length sequences -> ``[B, N, H, D]``."""
    chosen = resolve_backend(backend, q_BNHD, path="dense", needs_backward=needs_backward)
    if chosen == "fa4":
        return fa4_dense(q_BNHD, k_BNHD, v_BNHD, needs_backward=needs_backward)
    # v may be a strided view of a fused projection: the other kernels get it contiguous
    v_BNHD = v_BNHD.contiguous()
    if chosen == "flash":
        return _flash_call(0, q_BNHD, k_BNHD, v_BNHD)
    return sdpa(q_BNHD, k_BNHD, v_BNHD)


def varlen_cross_attention(
    q_BNHD: torch.Tensor,
    k_THD: torch.Tensor,
    v_THD: torch.Tensor,
    text: PackedText,
    backend: str = "auto",
    *,
    needs_backward: bool = True,
) -> torch.Tensor:
    """Each sample's queries attend to its own slice ``text.offsets[i] : text.offsets[i+1]``
    of the packed keys / values -> ``[B, N, H, D]`` (SDPA: one call per sample)."""
    chosen = resolve_backend(backend, q_BNHD, path="varlen", needs_backward=needs_backward)
    if chosen != "sdpa":
        return _varlen_kernel(chosen, q_BNHD, k_THD, v_THD, text, needs_backward)
    outs = []
    for i, (lo, hi) in enumerate(itertools.pairwise(text.offsets)):
        outs.append(sdpa(q_BNHD[i : i + 1], k_THD[None, lo:hi], v_THD[None, lo:hi]))
    return torch.cat(outs, dim=0)


def masked_cross_attention(
    q_BNHD,
    k_BLHD,
    v_BLHD,
    mask_BL: torch.Tensor | None,
    backend: str = "sdpa",
    packed: PackedText | None = None,
    *,
    needs_backward: bool = False,
) -> torch.Tensor:
    """Queries attend to each sample's valid keys (``mask_BL`` True) -> ``[B, N, H, D]``.

    Masked keys get zero weight, so a padded batch gives exactly the per-sample result. SDPA
    takes the mask; the varlen kernels take the valid keys gathered by ``packed`` (a
    :meth:`PackedText.from_mask`, built here from the mask when None).
    """
    chosen = resolve_backend(backend, q_BNHD, path="varlen", needs_backward=needs_backward)
    if chosen == "sdpa":
        return sdpa(q_BNHD, k_BLHD, v_BLHD, mask_BL)
    if packed is None:
        b, length = k_BLHD.shape[:2]
        full = torch.ones(b, length, dtype=torch.bool, device=k_BLHD.device)
        packed = PackedText.from_mask(full if mask_BL is None else mask_BL)
    k_THD, v_THD = packed.gather(k_BLHD), packed.gather(v_BLHD)
    return _varlen_kernel(chosen, q_BNHD, k_THD, v_THD, packed, needs_backward)


# ------------------------------------------------------------------ self-check
def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def fill_freed_cuda_memory(device: torch.device, numels: list[int]) -> None:
    """Allocate float32 blocks of ``numels`` elements on ``device`` filled with NaN and free
    them, so that the caching allocator hands out NaN memory for the next allocations of those
    sizes (on this stream). A kernel that reads memory it never wrote (an ``empty`` buffer it
    assumes zeroed: FA4 4.0.0b36's varlen dq accumulator) then fails every time instead of
    depending on what the memory held before. Give a size more than once: a smaller allocation
    made first (the backward's dq) may take, and split, one of the blocks."""
    blocks = [torch.full((n,), float("nan"), dtype=torch.float32, device=device) for n in numels]
    del blocks


def _outputs(fn, q, k, v, dout, needs_backward: bool, before_backward=None) -> list[torch.Tensor]:
    """``fn``'s output, and with ``needs_backward`` the gradients of q, k, v under ``dout``
    (``before_backward()`` runs between the forward and the backward)."""
    if not needs_backward:
        with torch.no_grad():
            return [fn(q, k, v)]
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    if before_backward is not None:
        before_backward()
    out.backward(dout)
    return [out.detach(), *(t.grad for t in leaves)]


def in_fresh_autograd_context(fn: Callable, *args):
    """``fn(*args)`` run on a new thread, and its result (or its exception) returned here.

    The self-check runs lazily, inside the first attention call, which may be under
    ``torch.no_grad()`` (a DPO reference forward), inside activation checkpointing (its
    saved-tensor hooks and early-stop frames) or under ``inference_mode``: its own backward
    then fails there ("does not require grad", ``_StopRecomputationError``) and ``auto`` would
    drop FA4 for the whole process. Grad mode, inference mode and the saved-tensor hooks are
    thread-local state, so a fresh thread starts from PyTorch's defaults."""
    result: list = []

    def target():
        try:
            result.append((True, fn(*args)))
        except BaseException as exc:  # handed to the caller's thread
            result.append((False, exc))

    worker = threading.Thread(target=target, name="mugv-attention-self-check")
    worker.start()
    worker.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


@functools.cache
def fa4_self_check(
    path: str, head_dim: int, device_index: int = 0, *, needs_backward: bool = True
) -> str | None:
    """Run FA4's ``path`` (``dense``: one sequence per sample; ``varlen``: queries against
    keys of unequal lengths with a hole in the mask) in bf16 against fp32 SDPA on random
    inputs at ``head_dim``: the output, and with ``needs_backward`` dq, dk and dv (the backward
    on memory pre-filled with NaN, :func:`fill_freed_cuda_memory`). None when
    each is within 2e-2 relative, else what failed (``auto`` then warns and does not use FA4
    for that path). Cached: once per process and arguments."""
    if fa4_functions() is None:
        problem = "flash-attn-4 (flash_attn.cute) does not import"
    else:
        problem = in_fresh_autograd_context(
            _run_self_check, path, head_dim, device_index, needs_backward
        )
    if problem is not None:
        warnings.warn(f"attention backend auto does not use FA4: {problem}", stacklevel=2)
    return problem


def _run_self_check(path: str, head_dim: int, device_index: int, needs_backward: bool):
    device = torch.device("cuda", device_index)
    torch.cuda.set_device(device)  # a fresh thread starts on device 0
    g = torch.Generator(device=device).manual_seed(1234)
    what = ("out", "dq", "dk", "dv")
    try:
        q, k, v, dout = (
            torch.randn(2, 320, 2, head_dim, generator=g, device=device, dtype=torch.bfloat16)
            for _ in range(4)
        )
        if path == "dense":
            got_fn = functools.partial(fa4_dense, needs_backward=needs_backward)
            ref_fn = sdpa
        else:
            k, v = k[:, :64], v[:, :64]
            mask = torch.zeros(2, 64, dtype=torch.bool, device=device)
            mask[0, :50] = True
            mask[1, 3:40:2] = True
            packed = PackedText.from_mask(mask)

            def got_fn(qq, kk, vv):
                return _varlen_kernel("fa4", qq, packed.gather(kk), packed.gather(vv), packed,
                                      needs_backward)  # fmt: skip

            def ref_fn(qq, kk, vv):
                return sdpa(qq, kk, vv, mask)

        # the backward's dq accumulator comes from NaN-filled memory (fill_freed_cuda_memory)
        poison = None
        if needs_backward:
            b, n, h, _ = q.shape
            width = fa4_padded_head_dim(head_dim)
            numels = 3 * [
                fa4_accum_layout.varlen_dq_accum_numel([i * n for i in range(b + 1)], h, width),
                fa4_accum_layout.dense_dq_accum_numel(b, n, h, width),
            ]
            poison = functools.partial(fill_freed_cuda_memory, device, numels)
        got = _outputs(got_fn, q, k, v, dout, needs_backward, poison)
        ref = _outputs(ref_fn, q.float(), k.float(), v.float(), dout.float(), needs_backward)
        errors = {w: _relative_error(a, r) for w, a, r in zip(what, got, ref)}
        torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel that fails to compile or launch
        return f"FA4 {path} failed at head dim {head_dim}: {type(exc).__name__}: {exc}"
    bad = [f"{w} rel err {e:.3g}" for w, e in errors.items() if not e < SELF_CHECK_TOLERANCE]
    return f"FA4 {path} at head dim {head_dim}: {'; '.join(bad)}" if bad else None


__all__ = [
    "BACKENDS",
    "FA4_EXACT_HEAD_DIMS",
    "FA4_PAD_TARGETS",
    "FA4_FIXED_EXACT_HEAD_DIMS",
    "FA4_FIXED_PAD_TARGETS",
    "fa4_exact_head_dims",
    "PATHS",
    "AttentionBackendError",
    "PackedText",
    "dense_attention",
    "fa4_dense",
    "fa4_functions",
    "fa4_head_dim",
    "fa4_padded_head_dim",
    "fa4_self_check",
    "fa4_varlen",
    "fill_freed_cuda_memory",
    "flash_attn2_functions",
    "in_fresh_autograd_context",
    "masked_cross_attention",
    "resolve_backend",
    "sdpa",
    "varlen_cross_attention",
]
