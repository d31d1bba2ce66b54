"""Modulated LayerNorm and gated residual + modulated LayerNorm (kernels 1 and 2).

Public functions dispatch between the Triton kernels (:mod:`._triton_modnorm`, wrapped in
autograd Functions here) and the PyTorch references (:mod:`.reference`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from mugv_kernels._dispatch import use_triton_for
from mugv_kernels._launch import row_tiling
from mugv_kernels._layout import Layout, flatten_activation, flatten_modulation, reduce_to_shape
from mugv_kernels.reference import (
    gated_residual_modulated_norm_ref,
    modulated_layer_norm_ref,
    resolve_layout,
)

_MODE = {"sample": 0, "token": 1, "branch": 2}


def _mod_strides(mod_k: torch.Tensor, layout: Layout) -> tuple[int, int, int, int]:
    """``(s_n, s_l, s_b, s_d)`` of a flattened modulation tensor (see the kernel module)."""
    if layout == "sample":
        return mod_k.stride(0), 0, 0, mod_k.stride(1)
    if layout == "token":
        return mod_k.stride(0), mod_k.stride(1), 0, mod_k.stride(2)
    return mod_k.stride(0), 0, mod_k.stride(1), mod_k.stride(2)


def _branch_mask(
    token_branch: torch.Tensor | None, x: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, int, int]:
    """``[N, L]`` uint8 view of the mask (or a dummy) and its strides."""
    if token_branch is None:
        return like, 0, 0
    lead = x.shape[:-2]
    mask = token_branch.expand(*lead, x.shape[-2]).reshape(math.prod(lead), x.shape[-2])
    mask = mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def _mod_grad_to_input(
    grad_k: torch.Tensor, spec: tuple, x_shape: torch.Size, layout: Layout
) -> torch.Tensor:
    """Kernel-space gradient (partials summed) -> gradient of the original modulation input.

    ``spec`` is ``(shape, dtype)`` of the modulation input.
    """
    mod_shape, mod_dtype = spec
    lead = tuple(x_shape[:-2])
    if layout != "token":
        grad_k = grad_k.sum(dim=1)
    hidden = x_shape[-1]
    if layout == "sample":
        grad = grad_k.reshape(*lead, hidden)
        if len(mod_shape) == len(x_shape):
            grad = grad.unsqueeze(-2)
    elif layout == "token":
        grad = grad_k.reshape(*lead, x_shape[-2], hidden)
    else:
        grad = grad_k.reshape(*lead, 2, hidden)
    return reduce_to_shape(grad, mod_shape).to(mod_dtype)


def _mod_grad_buffer(
    n: int, seq_len: int, hidden: int, p: int, layout: Layout, device, dtype: torch.dtype
):
    """Per-token gradients are final values, written in the modulation's dtype; per-sample and
    per-branch ones are fp32 partial sums per program."""
    if layout == "token":
        return torch.empty(n, seq_len, hidden, device=device, dtype=dtype)
    if layout == "sample":
        return torch.empty(n, p, hidden, device=device, dtype=torch.float32)
    return torch.empty(n, p, 2, hidden, device=device, dtype=torch.float32)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def mod_specs(*tensors: torch.Tensor) -> tuple:
    """``(shape, dtype)`` of each modulation input: what its gradient is reduced back to."""
    return tuple((t.shape, t.dtype) for t in tensors)


class ModLNOperands(NamedTuple):
    """The modulated-LN kernels' operands: ``x`` as ``[N, L, D]``, the flattened modulation
    (``shift_k`` None where only the backward needs them), the branch mask and its strides."""

    x_NLD: torch.Tensor
    shift_k: torch.Tensor | None
    scale_k: torch.Tensor
    br_NL: torch.Tensor
    sbr: tuple[int, int]


def modln_operands(x, shift, scale, token_branch, layout: Layout) -> ModLNOperands:
    """Flatten ``x`` and its modulation for :func:`modln_forward` / :func:`modln_backward`."""
    x_NLD = flatten_activation(x)
    shift_k = None if shift is None else flatten_modulation(shift, x, layout)
    br_NL, sbr_n, sbr_l = _branch_mask(token_branch, x, x_NLD)
    return ModLNOperands(
        x_NLD, shift_k, flatten_modulation(scale, x, layout), br_NL, (sbr_n, sbr_l)
    )


def modln_forward(ops: ModLNOperands, eps: float, layout: Layout):
    """The modulated-LN forward kernel -> ``(out_NLD, mean, rstd)`` (fp32 per-row stats);
    shared by :class:`ModulatedLayerNormFn` and :mod:`mugv_kernels.ln_linear`."""
    from mugv_kernels import _triton_modnorm as kern

    x_NLD, shift_k, scale_k = ops.x_NLD, ops.shift_k, ops.scale_k
    n, seq_len, hidden = x_NLD.shape
    out_NLD = torch.empty((n, seq_len, hidden), device=x_NLD.device, dtype=x_NLD.dtype)
    mean = torch.empty(n * seq_len, device=x_NLD.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_d, block_r, rows, warps = row_tiling(n, seq_len, hidden, x_NLD.device, "modln_fwd")
    kern.modln_fwd_kernel[(_cdiv(seq_len, rows), n)](
        x_NLD, out_NLD, shift_k, scale_k, ops.br_NL, mean, rstd,
        seq_len, hidden, rows, eps,
        *x_NLD.stride(), *out_NLD.stride(),
        *_mod_strides(shift_k, layout), *_mod_strides(scale_k, layout),
        *ops.sbr,
        MODE=_MODE[layout], BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    return out_NLD, mean, rstd


def modln_backward(dout, ops: ModLNOperands, mean, rstd, layout: Layout, x_shape, specs):
    """The modulated-LN backward kernel -> ``(dx, dshift, dscale)``: ``dx`` in ``x_shape``,
    ``dshift`` / ``dscale`` in the shape and dtype of their inputs (``specs``: ``(shape,
    dtype)`` of shift and of scale). ``dout``: any view of ``[N, L, D]`` elements."""
    from mugv_kernels import _triton_modnorm as kern

    x_NLD, scale_k = ops.x_NLD, ops.scale_k
    n, seq_len, hidden = x_NLD.shape
    dout_NLD = dout.reshape(n, seq_len, hidden)
    block_d, block_r, rows, warps = row_tiling(n, seq_len, hidden, x_NLD.device, "modln_bwd")
    p = _cdiv(seq_len, rows)
    dev = x_NLD.device
    dx_NLD = torch.empty((n, seq_len, hidden), device=dev, dtype=x_NLD.dtype)
    dshift_k = _mod_grad_buffer(n, seq_len, hidden, p, layout, dev, specs[0][1])
    dscale_k = _mod_grad_buffer(n, seq_len, hidden, p, layout, dev, specs[1][1])
    kern.modln_bwd_kernel[(p, n)](
        dout_NLD, x_NLD, scale_k, ops.br_NL, mean, rstd,
        dx_NLD, dshift_k, dscale_k,
        seq_len, hidden, rows, p,
        *dout_NLD.stride(), *x_NLD.stride(), *dx_NLD.stride(),
        *_mod_strides(scale_k, layout), *ops.sbr,
        MODE=_MODE[layout], BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    dshift = _mod_grad_to_input(dshift_k, specs[0], x_shape, layout)
    dscale = _mod_grad_to_input(dscale_k, specs[1], x_shape, layout)
    return dx_NLD.view(x_shape), dshift, dscale


class ModulatedLayerNormFn(torch.autograd.Function):
    """Triton forward/backward of :func:`modulated_layer_norm`."""

    @staticmethod
    def forward(ctx, x, shift, scale, token_branch, eps, layout):
        ops = modln_operands(x, shift, scale, token_branch, layout)
        out_NLD, mean, rstd = modln_forward(ops, eps, layout)
        ctx.save_for_backward(ops.x_NLD, ops.scale_k, ops.br_NL, mean, rstd)
        ctx.layout = layout
        ctx.x_shape = x.shape
        ctx.specs = mod_specs(shift, scale)
        ctx.sbr = ops.sbr
        return out_NLD.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        x_NLD, scale_k, br_NL, mean, rstd = ctx.saved_tensors
        ops = ModLNOperands(x_NLD, None, scale_k, br_NL, ctx.sbr)
        dx, dshift, dscale = modln_backward(
            dout, ops, mean, rstd, ctx.layout, ctx.x_shape, ctx.specs
        )
        return dx, dshift, dscale, None, None, None


class GatedResidualModulatedNormFn(torch.autograd.Function):
    """Triton forward/backward of :func:`gated_residual_modulated_norm`."""

    @staticmethod
    def forward(ctx, x, y, gate, shift, scale, bias, token_branch, eps, layout):
        from mugv_kernels import _triton_modnorm as kern

        ctx.set_materialize_grads(False)
        x_NLD = flatten_activation(x)
        y_NLD = flatten_activation(y)
        n, seq_len, hidden = x_NLD.shape
        gate_k = flatten_modulation(gate, x, layout)
        shift_k = flatten_modulation(shift, x, layout)
        scale_k = flatten_modulation(scale, x, layout)
        br_NL, sbr_n, sbr_l = _branch_mask(token_branch, x, x_NLD)
        h_NLD = torch.empty((n, seq_len, hidden), device=x.device, dtype=x.dtype)
        hn_NLD = torch.empty_like(h_NLD)
        mean = torch.empty(n * seq_len, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        block_d, block_r, rows, warps = row_tiling(n, seq_len, hidden, x.device, "gated_fwd")
        bias_arg = bias if bias is not None else x_NLD
        kern.gated_fwd_kernel[(_cdiv(seq_len, rows), n)](
            x_NLD, y_NLD, bias_arg, gate_k, shift_k, scale_k, br_NL,
            h_NLD, hn_NLD, mean, rstd,
            seq_len, hidden, rows, eps,
            *x_NLD.stride(), *y_NLD.stride(),
            *_mod_strides(gate_k, layout), *_mod_strides(shift_k, layout),
            *_mod_strides(scale_k, layout), sbr_n, sbr_l,
            MODE=_MODE[layout], HAS_BIAS=bias is not None, BLOCK_R=block_r, BLOCK_D=block_d,
            num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(h_NLD, y_NLD, bias_arg, gate_k, scale_k, br_NL, mean, rstd)
        ctx.layout = layout
        ctx.x_shape = x.shape
        ctx.y_dtype = y.dtype
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.specs = mod_specs(gate, shift, scale)
        ctx.sbr = (sbr_n, sbr_l)
        return h_NLD.view(x.shape), hn_NLD.view(x.shape)

    @staticmethod
    def backward(ctx, dh, dhn):
        from mugv_kernels import _triton_modnorm as kern

        h_NLD, y_NLD, bias_arg, gate_k, scale_k, br_NL, mean, rstd = ctx.saved_tensors
        layout = ctx.layout
        n, seq_len, hidden = h_NLD.shape
        if dhn is None:
            dhn = torch.zeros_like(h_NLD)
        dhn_NLD = dhn.reshape(n, seq_len, hidden)
        dh_NLD = dh.reshape(n, seq_len, hidden) if dh is not None else dhn_NLD
        block_d, block_r, rows, warps = row_tiling(n, seq_len, hidden, h_NLD.device, "gated_bwd")
        p = _cdiv(seq_len, rows)
        dev = h_NLD.device
        dx_NLD = torch.empty((n, seq_len, hidden), device=dev, dtype=h_NLD.dtype)
        dy_NLD = torch.empty((n, seq_len, hidden), device=dev, dtype=ctx.y_dtype)
        dgate_k, dshift_k, dscale_k = (
            _mod_grad_buffer(n, seq_len, hidden, p, layout, dev, spec[1]) for spec in ctx.specs
        )
        dbias_k = (
            torch.empty(n, p, hidden, device=dev, dtype=torch.float32) if ctx.has_bias else dx_NLD
        )
        kern.gated_bwd_kernel[(p, n)](
            dh_NLD, dhn_NLD, h_NLD, y_NLD, bias_arg, gate_k, scale_k, br_NL, mean, rstd,
            dx_NLD, dy_NLD, dgate_k, dshift_k, dscale_k, dbias_k,
            seq_len, hidden, rows, p,
            *dh_NLD.stride(), *dhn_NLD.stride(), *y_NLD.stride(),
            *_mod_strides(gate_k, layout), *_mod_strides(scale_k, layout), *ctx.sbr,
            MODE=_MODE[layout], HAS_BIAS=ctx.has_bias, HAS_DH=dh is not None,
            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
        )  # fmt: skip
        dgate = _mod_grad_to_input(dgate_k, ctx.specs[0], ctx.x_shape, layout)
        dshift = _mod_grad_to_input(dshift_k, ctx.specs[1], ctx.x_shape, layout)
        dscale = _mod_grad_to_input(dscale_k, ctx.specs[2], ctx.x_shape, layout)
        dbias = dbias_k.sum(dim=(0, 1)).to(ctx.bias_dtype) if ctx.has_bias else None
        x_shape = ctx.x_shape
        return (
            dx_NLD.view(x_shape), dy_NLD.view(x_shape), dgate, dshift, dscale, dbias,
            None, None, None,
        )  # fmt: skip


# Under torch.compile the Triton paths run as opaque eager calls (a graph break), so model code
# can be compiled whether the fused ops are on or off.
_triton_modln = torch.compiler.disable(ModulatedLayerNormFn.apply)
_triton_gated = torch.compiler.disable(GatedResidualModulatedNormFn.apply)


def modulated_layer_norm(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    token_branch: torch.Tensor | None = None,
    eps: float = 1e-6,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Modulated LayerNorm: ``y = LN(x) * (1 + scale) + shift`` (LN without affine).

    Args:
        x: activations ``[..., L, D]`` (any leading shape, any strides, bf16/fp16/fp32/fp64).
        shift, scale: per sample ``[..., D]`` (broadcast over ``L``; ``[..., 1, D]`` too), per
            token ``[..., L, D]``, or with ``token_branch`` per branch ``[..., 2, D]``.
        token_branch: optional ``[..., L]`` bool mask; True = the token takes branch 1 (the
            ``t=0`` modulation of clean conditioning frames), False = branch 0.
        eps: LayerNorm epsilon.
        use_triton: ``None`` = Triton on CUDA when available; ``True`` = force (CPU only under
            ``TRITON_INTERPRET=1``); ``False`` = PyTorch reference.

    Returns ``y`` of x's shape and dtype (fp32 accumulation).
    """
    layout = resolve_layout(x, {"shift": shift, "scale": scale}, token_branch)
    if not use_triton_for(use_triton, x, "modulated_layer_norm"):
        return modulated_layer_norm_ref(x, shift, scale, token_branch=token_branch, eps=eps)
    return _triton_modln(x, shift, scale, token_branch, float(eps), layout)


def gated_residual_modulated_norm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    token_branch: torch.Tensor | None = None,
    eps: float = 1e-6,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated residual add fused with the next sub-layer's modulated LayerNorm.

    ``h = x + gate * (y + bias)`` (``y`` is a sub-layer output before its bias; ``bias [D]`` is
    optional) and ``h_norm = LN(h) * (1 + scale) + shift``, where the norm reads ``h`` as
    returned (rounded to x's dtype). ``gate``, ``shift``, ``scale`` share one layout (see
    :func:`modulated_layer_norm`). Returns ``(h, h_norm)``, both of x's shape and dtype.
    """
    if y.shape != x.shape:
        raise ValueError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(f"bias must have shape [{x.shape[-1]}], got {tuple(bias.shape)}")
    layout = resolve_layout(x, {"gate": gate, "shift": shift, "scale": scale}, token_branch)
    if not use_triton_for(use_triton, x, "gated_residual_modulated_norm"):
        return gated_residual_modulated_norm_ref(
            x, y, gate, shift, scale, bias=bias, token_branch=token_branch, eps=eps
        )
    return _triton_gated(x, y, gate, shift, scale, bias, token_branch, float(eps), layout)
