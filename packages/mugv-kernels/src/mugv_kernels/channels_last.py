"""Channels-last forward of GroupNorm + SiLU and the fused ``bias_residual`` op (kernel 4).

Tensor legend: N samples, S spatial positions (H*W or T*H*W), C channels, G groups, P
statistics programs per sample; an activation ``[N, C, *spatial]`` stored channels-last
(``torch.channels_last`` / ``channels_last_3d``) is the contiguous matrix ``[N, S, C]``.

GroupNorm forward, two passes over ``x`` (kernels in ``_triton_groupnorm_cl``): per-program
group statistics over a run of position tiles (mean and M2 merged with Chan's formula,
``[N, P, G]`` partials), a small torch combine into group mean/rstd and per-channel
``a``, ``b``, then ``silu(x * a + b)`` in one pass. The producing convolution's bias
(``in_bias``) is folded into the statistics and into ``b``: ``silu(GN(x + in_bias))``
without a separate bias pass. Statistics in fp32.
"""

from __future__ import annotations

import torch

from mugv_kernels._dispatch import use_triton_for
from mugv_kernels._launch import TUNING, next_pow2
from mugv_kernels.reference import bias_residual_ref


def as_NSC(t: torch.Tensor) -> torch.Tensor | None:
    """``[N, S, C]`` view of a channels-last ``t [N, C, *spatial]``, or ``None`` if not one."""
    if t.ndim < 3:
        return None
    moved = t.movedim(1, -1)
    if not moved.is_contiguous():
        return None
    return moved.view(t.shape[0], -1, t.shape[1])


def _block_rows(c: int) -> int:
    return max(1, TUNING["gn_cl_fwd"]["tile_elems"] // next_pow2(c))


def forward_channels_last(
    x_NSC: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    in_bias: torch.Tensor | None = None,
    out_NSC: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``silu(GroupNorm(x + in_bias))`` of ``x_NSC [N, S, C]`` into ``out_NSC`` (new when
    ``None``; may be ``x_NSC`` itself). Returns ``(out_NSC, mean, rstd)``, the group
    statistics flattened ``[N*G]`` fp32 (of ``x + in_bias``)."""
    from mugv_kernels import _triton_groupnorm_cl as kern

    n, s, c = x_NSC.shape
    g, cpg = num_groups, c // num_groups
    tune = TUNING["gn_cl_fwd"]
    block_s = _block_rows(c)
    tiles_total = -(-s // block_s)
    tiles = max(1, min(tune["stat_tiles"], tiles_total))
    progs = -(-tiles_total // tiles)
    mean_p = torch.empty(n, progs, g, device=x_NSC.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    cnt_p = torch.empty(n, progs, device=x_NSC.device, dtype=torch.float32)
    kern.gn_cl_group_stats_kernel[(n, progs)](
        x_NSC, in_bias if in_bias is not None else mean_p, mean_p, m2_p, cnt_p, s, progs,
        HAS_BIAS=in_bias is not None, C=c, G=g, CPG=cpg, BLOCK_G=next_pow2(g),
        BLOCK_CPG=next_pow2(cpg), BLOCK_S=block_s, TILES=tiles, num_warps=tune["num_warps"],
    )  # fmt: skip
    # Chan's combine over the programs of each sample: [N, P, G] -> [N, G].
    cnt = cnt_p.unsqueeze(-1)
    total = cnt.sum(dim=1)
    mean = (cnt * mean_p).sum(dim=1) / total
    m2 = m2_p.sum(dim=1) + (cnt * (mean_p - mean.unsqueeze(1)).square()).sum(dim=1)
    rstd = torch.rsqrt(m2 / total + eps)
    # Per-channel scale/shift: silu(a * x + b), the input bias folded into b.
    w = weight.float() if weight is not None else torch.ones(c, device=x_NSC.device)
    beta = bias.float() if bias is not None else torch.zeros(c, device=x_NSC.device)
    a = rstd.repeat_interleave(cpg, dim=1) * w
    shift = mean.repeat_interleave(cpg, dim=1)
    if in_bias is not None:
        shift = shift - in_bias.float()
    b = (beta - shift * a).contiguous()
    out_NSC = torch.empty_like(x_NSC) if out_NSC is None else out_NSC
    kern.gn_cl_scale_shift_silu_kernel[(n, -(-s // block_s))](
        x_NSC, out_NSC, a.contiguous(), b, s,
        C=c, BLOCK_C=next_pow2(c), BLOCK_S=block_s, num_warps=tune["num_warps"],
    )  # fmt: skip
    return out_NSC, mean.view(-1), rstd.view(-1)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_bias_residual(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> None:
    """Validate a :func:`bias_residual` call; raises ``ValueError`` naming the field."""
    if x.ndim < 2:
        raise ValueError(f"x must have shape [N, C, *spatial], got {tuple(x.shape)}")
    if residual.shape != x.shape:
        raise ValueError(
            f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"bias must have shape [{x.shape[1]}], got {tuple(bias.shape)}")


def bias_residual(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    *,
    inplace: bool = False,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """``x + bias + residual`` for ``x``, ``residual [N, C, *spatial]`` and a per-channel
    ``bias [C]`` (``None``: no bias), e.g. a res-block's second convolution run without its
    bias plus the shortcut.

    The Triton path (one pass, fp32 sum rounded once) runs for channels-last ``x`` and
    ``residual`` with a bias and no autograd; every other case is the PyTorch expression
    (:func:`mugv_kernels.reference.bias_residual_ref`, autograd works). ``inplace``: write
    the result over ``x`` (inference only: ``ValueError`` when autograd needs ``x``).
    ``use_triton`` as in :func:`mugv_kernels.modulated_layer_norm`.
    """
    check_bias_residual(x, bias, residual)
    needs_grad = _needs_grad(x, bias, residual)
    if inplace and needs_grad:
        raise ValueError("bias_residual: inplace=True is inference-only (autograd is on)")
    x_NSC, r_NSC = as_NSC(x), as_NSC(residual)
    fused = (
        bias is not None
        and not needs_grad
        and x.ndim >= 3
        and x_NSC is not None
        and r_NSC is not None
        and use_triton_for(use_triton, x, "bias_residual")
    )
    if not fused:
        out = bias_residual_ref(x, bias, residual)
        return x.copy_(out) if inplace else out
    from mugv_kernels import _triton_groupnorm_cl as kern

    c = x.shape[1]
    m = x_NSC.shape[0] * x_NSC.shape[1]
    block_m = _block_rows(c)
    out = x if inplace else torch.empty_like(x)
    kern.bias_residual_kernel[(-(-m // block_m),)](
        x_NSC, bias, r_NSC, as_NSC(out), m,
        C=c, BLOCK_C=next_pow2(c), BLOCK_M=block_m, num_warps=TUNING["gn_cl_fwd"]["num_warps"],
    )  # fmt: skip
    return out
