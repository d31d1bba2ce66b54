"""GroupNorm + SiLU for channels-first VAE activations (kernel 4)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from mugv_kernels._dispatch import interpreter_enabled, use_triton_for
from mugv_kernels._launch import TUNING, next_pow2, sm_count
from mugv_kernels.channels_last import forward_channels_last
from mugv_kernels.reference import check_group_norm, group_norm_silu_ref


def _block(spatial: int) -> int:
    return min(TUNING["gn"]["block"], next_pow2(spatial))


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x [N, C, *spatial]`` is stored channels-last (NHWC / NDHWC memory: the
    channel stride is 1 and the rest is dense), and not also plainly contiguous."""
    return (not x.is_contiguous()) and x.movedim(1, -1).is_contiguous()


def _cl_tiling(s: int, c: int) -> tuple[int, int, int, int, int]:
    """``(BLOCK_S, BLOCK_C, tiles, stat_chunks, tile_chunks)`` of the channels-last backward
    kernels: reduce programs take ``tiles`` position tiles each (``stat_chunks`` per sample),
    the dx programs one tile (``tile_chunks`` per sample)."""
    block_c = min(next_pow2(c), TUNING["gn_cl"]["max_block_c"])
    block_s = max(1, min(TUNING["gn"]["block"] // block_c, next_pow2(s)))
    tile_chunks = -(-s // block_s)
    tiles = max(1, min(TUNING["gn_cl"]["stat_tiles"], tile_chunks))
    return block_s, block_c, tiles, -(-tile_chunks // tiles), tile_chunks


def _combine(mean_c, m2_c, n, c, num_groups, chunks, s, block, eps):
    """Group mean/rstd (``[N*G]`` fp32) from per-channel chunk partials ``[N*C, chunks]``."""
    from mugv_kernels import _triton_groupnorm as kern

    groups = n * num_groups
    per_group = (c // num_groups) * chunks
    mean = torch.empty(groups, device=mean_c.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    chunk_block = min(1024, next_pow2(per_group))
    kern.gn_combine_kernel[(groups,)](
        mean_c, m2_c, mean, rstd, s, chunks, per_group, eps,
        BLOCK=block, CHUNK_BLOCK=chunk_block, num_warps=4,
    )  # fmt: skip
    return mean, rstd


def _group_stats(x_NCS: torch.Tensor, num_groups: int, eps: float, block: int):
    """Mean and rstd per ``(n, group)`` (flattened ``[N*G]`` fp32) from chunk partials."""
    from mugv_kernels import _triton_groupnorm as kern

    n, c, s = x_NCS.shape
    chunks = -(-s // block)
    mean_c = torch.empty(n * c, chunks, device=x_NCS.device, dtype=torch.float32)
    m2_c = torch.empty_like(mean_c)
    kern.gn_stats_kernel[(n * c, chunks)](
        x_NCS, mean_c, m2_c, s, chunks, BLOCK=block, num_warps=TUNING["gn"]["num_warps"]
    )
    return _combine(mean_c, m2_c, n, c, num_groups, chunks, s, block, eps)


def _param_grad(t_NC: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Weight or bias gradient ``[C]`` from per-sample sums ``[N, C]`` (fewest launches)."""
    return (t_NC[0] if t_NC.shape[0] == 1 else t_NC.sum(dim=0)).to(dtype)


def _backward_sums(sum_dz, sum_dz_xhat, w, n, c, num_groups, s):
    """Per-channel sums ``a [N, C]``, ``b [N, C]`` and per-group ``m1``, ``m2`` of dx, from
    the chunk partials ``[N*C, chunks]`` (one small launch)."""
    from mugv_kernels import _triton_groupnorm as kern

    cpg, chunks = c // num_groups, sum_dz.shape[1]
    a_NC = torch.empty(n, c, device=w.device, dtype=torch.float32)
    b_NC = torch.empty_like(a_NC)
    m1 = torch.empty(n * num_groups, device=w.device, dtype=torch.float32)
    m2 = torch.empty_like(m1)
    cpg_block = next_pow2(cpg)
    chunk_block = max(1, min(next_pow2(chunks), 4096 // cpg_block))
    kern.gn_bwd_group_sums_kernel[(n * num_groups,)](
        sum_dz, sum_dz_xhat, w, a_NC, b_NC, m1, m2, c, cpg, chunks, float(cpg * s),
        CPG_BLOCK=cpg_block, CHUNK_BLOCK=chunk_block, num_warps=4,
    )  # fmt: skip
    return a_NC, b_NC, m1, m2


def _bwd_channels_last(dout_NSC, x_NSC, w, b, mean, rstd, num_groups):
    from mugv_kernels import _triton_groupnorm_cl as kern

    n, s, c = x_NSC.shape
    block_s, block_c, tiles, stat_chunks, tile_chunks = _cl_tiling(s, c)
    c_blocks = -(-c // block_c)
    warps = TUNING["gn_cl"]["num_warps"]
    cpg = c // num_groups
    sum_dz = torch.empty(n * c, stat_chunks, device=x_NSC.device, dtype=torch.float32)
    sum_dz_xhat = torch.empty_like(sum_dz)
    kern.gn_cl_bwd_reduce_kernel[(n * stat_chunks, c_blocks)](
        dout_NSC, x_NSC, w, b, mean, rstd, sum_dz, sum_dz_xhat, s, c, cpg, stat_chunks, tiles,
        BLOCK_S=block_s, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    a_NC, b_NC, m1, m2 = _backward_sums(sum_dz, sum_dz_xhat, w, n, c, num_groups, s)
    dx = torch.empty_like(x_NSC)
    kern.gn_cl_bwd_dx_kernel[(n * tile_chunks, c_blocks)](
        dout_NSC, x_NSC, dx, w, b, mean, rstd, m1, m2, s, c, cpg, tile_chunks,
        BLOCK_S=block_s, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return dx, a_NC, b_NC


@dataclass(frozen=True)
class _CoopPlan:
    """Item split of the cooperative kernels (see ``_triton_groupnorm_coop``)."""

    cpc: int  # whole channels per item (kc == 1) or 1
    kc: int  # chunks per channel
    sc: int  # elements per chunk
    k: int  # items per group
    programs: int  # persistent programs, a multiple of k


def _coop_plan(n: int, c: int, s: int, num_groups: int, device: torch.device) -> _CoopPlan | None:
    """Split for the cooperative kernels, or ``None`` when they do not apply (switched off,
    tiny spatial size, or a group needs more items than programs can be co-resident)."""
    tune = TUNING["gn_coop"]
    if not tune["enabled"] or s < tune["min_spatial"]:
        return None
    cpg = c // num_groups
    tile = tune["tile"]
    if interpreter_enabled():  # programs run one after another: one item per group
        return _CoopPlan(cpg, 1, s, 1, min(n * num_groups, 4))
    target = tune["item_elems"]
    if s >= target:
        per_chunk = -(-s // -(-s // target))  # even split into ceil(s / target) chunks
        sc = -(-per_chunk // tile) * tile  # rounded up to whole tiles
        kc = -(-s // sc)
        cpc = 1
    else:
        kc, sc = 1, s
        cpc = max(d for d in range(1, cpg + 1) if cpg % d == 0 and d * s <= target)
    k = (cpg // cpc) * kc
    resident = _resident_programs(device)
    if k > resident:
        return None
    items = n * num_groups * k
    return _CoopPlan(cpc, kc, sc, k, min(items, resident // k * k))


def _resident_programs(device: torch.device) -> int:
    """Programs of the cooperative kernels that are surely co-resident: from the register
    and shared-memory use of the compiled kernels (fallback: one per multiprocessor)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    tune = TUNING["gn_coop"]
    return _resident(index, tune["num_warps"], tune["tile"], tune["programs_per_sm"])


@functools.cache
def _resident(index: int, warps: int, tile: int, max_per_sm: int) -> int:
    from mugv_kernels import _triton_groupnorm_coop as kern

    device = torch.device("cuda", index)
    props = torch.cuda.get_device_properties(index)
    try:
        regs, shared = 0, 0
        for fn in (kern.gn_coop_fwd_kernel, kern.gn_coop_bwd_kernel):
            compiled = _warmup(fn, device, warps, tile)
            regs = max(regs, int(compiled.n_regs))
            shared = max(shared, int(compiled.metadata.shared))
    except Exception:  # unknown: one program per multiprocessor always fits
        return props.multi_processor_count
    threads = 32 * warps
    per_sm = min(2048 // threads, 65536 // (max(8, -(-regs // 8) * 8) * threads), 32)
    smem = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    per_sm = min(per_sm, smem // (shared + 1024))
    return max(1, min(per_sm, max_per_sm)) * props.multi_processor_count


def _warmup(fn, device: torch.device, warps: int, tile: int):
    """Compile (not run) a cooperative kernel for bf16 and read its resource use."""
    t = torch.empty(8, device=device, dtype=torch.bfloat16)
    f = torch.empty(8, device=device, dtype=torch.float32)
    i = torch.empty(8, device=device, dtype=torch.int32)
    meta = {"CPC": 1, "TILE": tile, "CB": 64, "num_warps": warps}
    if fn.arg_names[0] == "x_ptr":
        args = (t, t, t, t, f, f, i, f, f, 128, 4096, 4, 64, 2, 2, 4096, 1e-6)
    else:
        args = (t, t, t, t, t, f, f, f, f, i, 128, 4096, 4, 64, 2, 2, 4096)
    compiled = fn.warmup(*args, grid=(1,), **meta)
    if hasattr(compiled, "_init_handles"):
        compiled._init_handles()
    return compiled


def _coop_buffers(n: int, c: int, num_groups: int, plan: _CoopPlan, device):
    part = torch.empty(n * c, plan.kc, device=device, dtype=torch.float32)
    counters = torch.zeros(n * num_groups, device=device, dtype=torch.int32)
    return part, torch.empty_like(part), counters


def _fwd_coop(x_NCS, num_groups, w, b, eps, plan: _CoopPlan):
    from mugv_kernels import _triton_groupnorm_coop as kern

    n, c, s = x_NCS.shape
    mean_c, m2_c, counters = _coop_buffers(n, c, num_groups, plan, x_NCS.device)
    mean = torch.empty(n * num_groups, device=x_NCS.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    out = torch.empty_like(x_NCS)
    tune = TUNING["gn_coop"]
    kern.gn_coop_fwd_kernel[(plan.programs,)](
        x_NCS, out, w, b, mean_c, m2_c, counters, mean, rstd,
        c, s, c // num_groups, n * num_groups * plan.k, plan.k, plan.kc, plan.sc, eps,
        CPC=plan.cpc, TILE=tune["tile"], CB=min(1024, next_pow2(plan.k * plan.cpc)),
        num_warps=tune["num_warps"],
    )  # fmt: skip
    return out, mean, rstd


def _bwd_coop(dout_NCS, x_NCS, w, b, mean, rstd, num_groups, plan: _CoopPlan):
    from mugv_kernels import _triton_groupnorm_coop as kern

    n, c, s = x_NCS.shape
    sum_dz, sum_dzx, counters = _coop_buffers(n, c, num_groups, plan, x_NCS.device)
    dx = torch.empty_like(x_NCS)
    tune = TUNING["gn_coop"]
    kern.gn_coop_bwd_kernel[(plan.programs,)](
        dout_NCS, x_NCS, dx, w, b, mean, rstd, sum_dz, sum_dzx, counters,
        c, s, c // num_groups, n * num_groups * plan.k, plan.k, plan.kc, plan.sc,
        CPC=plan.cpc, TILE=tune["tile"], CB=min(1024, next_pow2(plan.k * plan.cpc)),
        num_warps=tune["num_warps"],
    )  # fmt: skip
    return dx, sum_dz.sum(dim=1).view(n, c), sum_dzx.sum(dim=1).view(n, c)


def _as_NSC(t: torch.Tensor) -> torch.Tensor:
    """``[N, C, *spatial]`` -> ``[N, S, C]`` (a view when ``t`` is channels-last)."""
    t_NSC = t.movedim(1, -1)
    return t_NSC.contiguous().view(t.shape[0], -1, t.shape[1])


def _from_NSC(t_NSC: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``[N, S, C]`` -> ``[N, C, *spatial]`` view with channels-last strides."""
    return t_NSC.view(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


class GroupNormSiLUFn(torch.autograd.Function):
    """Triton forward/backward of :func:`group_norm_silu`."""

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        from mugv_kernels import _triton_groupnorm as kern

        n, c = x.shape[:2]
        s = math.prod(x.shape[2:])
        w = weight if weight is not None else torch.ones(c, device=x.device)
        b = bias if bias is not None else torch.zeros(c, device=x.device)
        meta = (x.shape, num_groups, weight is not None, bias is not None)
        if is_channels_last(x):
            x_NSC = _as_NSC(x)
            out_NSC, mean, rstd = forward_channels_last(x_NSC, num_groups, weight, bias, eps)
            ctx.save_for_backward(x_NSC, w, b, mean, rstd)
            ctx.meta = (*meta, "channels_last")
            return _from_NSC(out_NSC, x.shape)
        x_NCS = x.contiguous().view(n, c, s)
        plan = _coop_plan(n, c, s, num_groups, x.device)
        if plan is not None:
            out, mean, rstd = _fwd_coop(x_NCS, num_groups, w, b, eps, plan)
            ctx.save_for_backward(x_NCS, w, b, mean, rstd)
            ctx.meta = (*meta, plan)
            return out.view(x.shape)
        block = _block(s)
        warps = TUNING["gn"]["num_warps"]
        out = torch.empty_like(x_NCS)
        groups = n * num_groups
        per_group = bool(TUNING["gn"]["group_kernel"]) and (
            groups >= TUNING["gn"]["group_min_per_sm"] * sm_count(x.device)
        )
        if per_group:
            mean = torch.empty(groups, device=x.device, dtype=torch.float32)
            rstd = torch.empty_like(mean)
            kern.gn_group_fwd_kernel[(groups,)](
                x_NCS, out, w, b, mean, rstd, c, s, c // num_groups, eps,
                BLOCK=block, num_warps=warps,
            )  # fmt: skip
        else:
            mean, rstd = _group_stats(x_NCS, num_groups, eps, block)
            kern.gn_apply_kernel[(n * c, -(-s // block))](
                x_NCS, out, w, b, mean, rstd, c, s, c // num_groups, BLOCK=block, num_warps=warps,
            )  # fmt: skip
        ctx.save_for_backward(x_NCS, w, b, mean, rstd)
        ctx.meta = (*meta, "per_group" if per_group else "chunked")
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        from mugv_kernels import _triton_groupnorm as kern

        x_saved, w, b, mean, rstd = ctx.saved_tensors
        x_shape, num_groups, has_w, has_b, variant = ctx.meta
        if variant == "channels_last":
            dx_NSC, a_NC, b_NC = _bwd_channels_last(
                _as_NSC(dout), x_saved, w, b, mean, rstd, num_groups
            )
            dw = _param_grad(b_NC, w.dtype) if has_w else None
            db = _param_grad(a_NC, b.dtype) if has_b else None
            return _from_NSC(dx_NSC, x_shape), None, dw, db, None
        x_NCS = x_saved
        n, c, s = x_NCS.shape
        dout_NCS = dout.contiguous().view(n, c, s)
        if isinstance(variant, _CoopPlan):
            dx, a_NC, b_NC = _bwd_coop(dout_NCS, x_NCS, w, b, mean, rstd, num_groups, variant)
            dw = _param_grad(b_NC, w.dtype) if has_w else None
            db = _param_grad(a_NC, b.dtype) if has_b else None
            return dx.view(x_shape), None, dw, db, None
        block = _block(s)
        if variant == "per_group":
            dx = torch.empty_like(x_NCS)
            a_NC = torch.empty(n, c, device=x_NCS.device, dtype=torch.float32)
            b_NC = torch.empty_like(a_NC)
            kern.gn_group_bwd_kernel[(n * num_groups,)](
                dout_NCS, x_NCS, dx, w, b, mean, rstd, a_NC, b_NC, c, s, c // num_groups,
                BLOCK=block, num_warps=TUNING["gn"]["num_warps"],
            )  # fmt: skip
            dw = _param_grad(b_NC, w.dtype) if has_w else None
            db = _param_grad(a_NC, b.dtype) if has_b else None
            return dx.view(x_shape), None, dw, db, None
        chunks = -(-s // block)
        grid = (n * c, chunks)
        sum_dz = torch.empty(n * c, chunks, device=x_NCS.device, dtype=torch.float32)
        sum_dz_xhat = torch.empty_like(sum_dz)
        kern.gn_bwd_reduce_kernel[grid](
            dout_NCS, x_NCS, w, b, mean, rstd, sum_dz, sum_dz_xhat,
            c, s, c // num_groups, chunks, BLOCK=block, num_warps=TUNING["gn"]["num_warps"],
        )  # fmt: skip
        a_NC, b_NC, m1, m2 = _backward_sums(sum_dz, sum_dz_xhat, w, n, c, num_groups, s)
        dx = torch.empty_like(x_NCS)
        kern.gn_bwd_dx_kernel[grid](
            dout_NCS, x_NCS, dx, w, b, mean, rstd, m1, m2,
            c, s, c // num_groups, BLOCK=block, num_warps=TUNING["gn"]["num_warps"],
        )  # fmt: skip
        dw = _param_grad(b_NC, w.dtype) if has_w else None
        db = _param_grad(a_NC, b.dtype) if has_b else None
        return dx.view(x_shape), None, dw, db, None


_triton_gn = torch.compiler.disable(GroupNormSiLUFn.apply)  # graph break under torch.compile


@torch.compiler.disable
def _triton_gn_inference(x, num_groups, weight, bias, eps, in_bias, inplace):
    """Channels-last forward without autograd (no saved tensors; ``in_bias`` folded in)."""
    x_NSC = _as_NSC(x)
    out = x if inplace else torch.empty_like(x)
    forward_channels_last(x_NSC, num_groups, weight, bias, eps, in_bias, _as_NSC(out))
    return out


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    eps: float = 1e-6,
    in_bias: torch.Tensor | None = None,
    inplace: bool = False,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """``silu(GroupNorm(x + in_bias, num_groups, weight, bias, eps))`` for ``x [N, C, *spatial]``.

    ``weight``/``bias`` are ``[C]`` or ``None`` (no affine). ``in_bias [C]`` (optional) is the
    bias of the convolution that produced ``x`` (run without it): the Triton channels-last
    path folds it into the normalisation, without a separate bias pass. The Triton path reads
    ``x`` as stored when it is channels-first contiguous or channels-last
    (``torch.channels_last`` / ``channels_last_3d``: no copy, and the output and ``dx`` keep
    that memory format); any other layout is copied once to channels-first. Statistics and
    arithmetic in fp32; output in x's dtype. ``inplace``: the channels-last Triton path
    writes the result over ``x`` (a dead temporary; inference only: ``ValueError`` when
    autograd is on for an input); other paths return a new tensor. ``use_triton`` as in
    :func:`mugv_kernels.modulated_layer_norm`.
    """
    check_group_norm(x, num_groups, weight, bias)
    if in_bias is not None and tuple(in_bias.shape) != (x.shape[1],):
        raise ValueError(f"in_bias must have shape [{x.shape[1]}], got {tuple(in_bias.shape)}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, in_bias)
    )
    if inplace and needs_grad:
        raise ValueError("group_norm_silu: inplace=True is inference-only (autograd is on)")
    triton_path = use_triton_for(use_triton, x, "group_norm_silu")
    if triton_path and not needs_grad and is_channels_last(x):
        return _triton_gn_inference(x, int(num_groups), weight, bias, float(eps), in_bias, inplace)
    if in_bias is not None:
        x = x + in_bias.view(1, -1, *([1] * (x.ndim - 2)))
    if not triton_path:
        return group_norm_silu_ref(x, num_groups, weight, bias, eps=eps)
    return _triton_gn(x, int(num_groups), weight, bias, float(eps))
