"""Parity checks of the Triton kernels against float64 PyTorch references.

One list of cases serves the CPU interpreter tests (``size="tiny"``), the GPU tests and the
``mugv-kernels check`` command (``size="medium"``). Each case draws fresh random inputs, runs
the op through the Triton path in the case's dtype, runs the reference in float64 on the same
(already rounded) inputs, and compares outputs and the gradients of every differentiable input
by ``||a - ref|| / ||ref||``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mugv_kernels import reference as ref
from mugv_kernels._launch import TUNING, next_pow2
from mugv_kernels.group_norm import group_norm_silu
from mugv_kernels.modulated_norm import gated_residual_modulated_norm, modulated_layer_norm
from mugv_kernels.qk_norm_rope import qk_rmsnorm_rope3d
from mugv_kernels.rope import rope3d_frequencies

#: relative-error bounds (output, gradients) per dtype
TOLERANCE = {torch.float32: (2e-5, 1e-4), torch.bfloat16: (1e-2, 2e-2)}


@dataclass(frozen=True)
class Case:
    """One parity check: ``build(device, dtype, gen)`` returns ``(fn, ref_fn, inputs)``."""

    name: str
    dtype: torch.dtype
    build: Callable


@dataclass
class Result:
    name: str
    out_err: float
    grad_err: dict[str, float]
    out_tol: float
    grad_tol: float

    @property
    def ok(self) -> bool:
        errs = [self.out_err, *self.grad_err.values()]
        finite = all(e == e for e in errs)  # NaN fails
        return (
            finite
            and self.out_err <= self.out_tol
            and all(e <= self.grad_tol for e in self.grad_err.values())
        )

    def line(self) -> str:
        worst = max(self.grad_err.values(), default=0.0)
        flag = "ok" if self.ok else "FAIL"
        return f"{flag:4s} {self.name:48s} out {self.out_err:.2e} grad(max) {worst:.2e}"


@contextlib.contextmanager
def _tuned(key: str, **params: int) -> Iterator[None]:
    """Temporarily override launch parameters (to cover every kernel variant)."""
    old = dict(TUNING[key])
    TUNING[key].update(params)
    try:
        yield
    finally:
        TUNING[key].clear()
        TUNING[key].update(old)


def _rand(shape, device, dtype, gen, *, offset: float = 0.0, scale: float = 1.0):
    t = torch.randn(shape, generator=gen, dtype=torch.float32, device="cpu") * scale + offset
    return t.to(device=device, dtype=dtype)


def _noncontig_act(b, seq_len, hidden, device, dtype, gen):
    """``[B, L, D]`` activation that is a transposed view (not contiguous)."""
    return _rand((seq_len, b, hidden), device, dtype, gen, offset=0.5).transpose(0, 1)


def _modln_case(b, seq_len, hidden, layout, *, noncontig=False, lead=(), shared=False):
    """``shared``: the modulation has leading dims of 1 (one table broadcast over the batch)."""

    def build(device, dtype, gen):
        if noncontig:
            x = _noncontig_act(b, seq_len, hidden, device, dtype, gen)
        else:
            x = _rand((*lead, b, seq_len, hidden), device, dtype, gen, offset=0.5)
        mb = 1 if shared else b
        mshape = {
            "sample": (*lead, mb, hidden),
            "token": (*lead, mb, seq_len, hidden),
            "branch": (*lead, mb, 2, hidden),
        }[layout]
        shift = _rand(mshape, device, dtype, gen, scale=0.5)
        scale = _rand(mshape, device, dtype, gen, scale=0.5)
        mask = None
        if layout == "branch":
            mask = torch.rand((*lead, b, seq_len), generator=gen) < 0.4
            mask = mask.to(device)
        inputs = {"x": x, "shift": shift, "scale": scale}

        def fn(x, shift, scale):
            return modulated_layer_norm(x, shift, scale, token_branch=mask, use_triton=True)

        def ref_fn(x, shift, scale):
            return ref.modulated_layer_norm_ref(x, shift, scale, token_branch=mask)

        return fn, ref_fn, inputs

    tag = f"modln[{layout}] {(*lead, b, seq_len, hidden)}" + (" strided" if noncontig else "")
    tag += " shared" if shared else ""
    return tag, build


def _gated_case(b, seq_len, hidden, layout, *, bias=True, noncontig=False):
    def build(device, dtype, gen):
        if noncontig:
            x = _noncontig_act(b, seq_len, hidden, device, dtype, gen)
        else:
            x = _rand((b, seq_len, hidden), device, dtype, gen, offset=0.5)
        y = _rand((b, seq_len, hidden), device, dtype, gen)
        mshape = {
            "sample": (b, 1, hidden),
            "token": (b, seq_len, hidden),
            "branch": (b, 2, hidden),
        }[layout]
        inputs = {
            "x": x,
            "y": y,
            "gate": _rand(mshape, device, dtype, gen, scale=0.5),
            "shift": _rand(mshape, device, dtype, gen, scale=0.5),
            "scale": _rand(mshape, device, dtype, gen, scale=0.5),
        }
        if bias:
            inputs["bias"] = _rand((hidden,), device, dtype, gen, scale=0.5)
        mask = None
        if layout == "branch":
            mask = (torch.rand((b, seq_len), generator=gen) < 0.4).to(device)

        def fn(x, y, gate, shift, scale, bias=None):
            return gated_residual_modulated_norm(
                x, y, gate, shift, scale, bias=bias, token_branch=mask, use_triton=True
            )

        def ref_fn(x, y, gate, shift, scale, bias=None):
            return ref.gated_residual_modulated_norm_ref(
                x, y, gate, shift, scale, bias=bias, token_branch=mask
            )

        return fn, ref_fn, inputs

    tag = f"gated[{layout}] {(b, seq_len, hidden)}" + ("" if bias else " nobias")
    return tag + (" strided" if noncontig else ""), build


def _qk_case(
    b,
    grid_thw,
    heads_q,
    heads_k,
    head_dim,
    *,
    strided=False,
    per_sample=False,
    tile=0,
    hsplit=None,
    dw_reduce=False,
):
    """``per_sample``: ``[B, L, P]`` tables (frame positions differ per sample); ``tile``:
    a small ``tile_elems`` and one program per multiprocessor (several token blocks per
    program, partial last block); ``hsplit``: force the head-dim split (1) or one padded part
    (0) in both the forward and the backward; ``dw_reduce``: the step-wise weight-gradient sums."""
    seq_len = grid_thw[0] * grid_thw[1] * grid_thw[2]

    def build(device, dtype, gen):
        if strided:  # q, k as views into a fused [B, L, 3, H, Dh] qkv projection
            qkv = _rand((b, seq_len, 3, heads_q, head_dim), device, dtype, gen)
            q, k = qkv[:, :, 0], qkv[:, :, 1]
        else:
            q = _rand((b, seq_len, heads_q, head_dim), device, dtype, gen)
            k = _rand((b, seq_len, heads_k, head_dim), device, dtype, gen)
        split = None
        if head_dim % 6:
            third = 2 * ((head_dim // 2) // 3)
            split = (head_dim - 2 * third, third, third)
        if per_sample:
            tables = [
                rope3d_frequencies(
                    grid_thw,
                    head_dim,
                    split=split,
                    frame_positions=torch.arange(grid_thw[0]) * (i + 1) + i,
                    device=device,
                )
                for i in range(b)
            ]
            cos = torch.stack([c for c, _ in tables])
            sin = torch.stack([s_ for _, s_ in tables])
        else:
            cos, sin = rope3d_frequencies(grid_thw, head_dim, split=split, device=device)
        inputs = {
            "q": q,
            "k": k,
            "q_weight": _rand((head_dim,), device, dtype, gen, offset=1.0, scale=0.2),
            "k_weight": _rand((head_dim,), device, dtype, gen, offset=1.0, scale=0.2),
        }

        def fn(q, k, q_weight, k_weight):
            tune = {"tile_elems": tile, "programs_per_sm": 1} if tile else {}
            if hsplit is not None:
                tune["split"] = hsplit
            bwd_tune = {**tune, "dw_reduce": int(dw_reduce)}
            with _tuned("qk", **tune), _tuned("qk_bwd", **bwd_tune):
                return qk_rmsnorm_rope3d(q, k, q_weight, k_weight, cos, sin, use_triton=True)

        def ref_fn(q, k, q_weight, k_weight):
            return ref.qk_rmsnorm_rope3d_ref(q, k, q_weight, k_weight, cos.double(), sin.double())

        return fn, ref_fn, inputs

    tag = f"qk_rope B{b} {grid_thw} Hq{heads_q} Hk{heads_k} Dh{head_dim}"
    tag += " per-sample" if per_sample else ""
    tag += f" tile{tile}" if tile else ""
    tag += f" split{hsplit}" if hsplit is not None else ""
    tag += " dw-reduce" if dw_reduce else ""
    return tag + (" strided" if strided else ""), build


def _gn_case(
    shape,
    groups,
    *,
    affine=True,
    offset=2.0,
    group_kernel=False,
    channels_last=False,
    block_c=0,
    coop=False,
    item=0,
    block=0,
):
    """``channels_last``: ``x`` in NHWC / NDHWC memory (the output and dx must keep it);
    ``block_c``: narrower channel tiles (several tiles per row) and 4-position chunks for the
    channels-last path; ``coop``: the cooperative kernels (``item``: elements per item);
    ``block``: a small chunk size of the channels-first chunked kernels (many chunks)."""

    def build(device, dtype, gen):
        channels = shape[1]
        x = _rand(shape, device, dtype, gen, offset=offset)
        if channels_last:
            fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
            x = x.contiguous(memory_format=fmt)
        inputs = {"x": x}
        if affine:
            inputs["weight"] = _rand((channels,), device, dtype, gen, offset=1.0, scale=0.3)
            inputs["bias"] = _rand((channels,), device, dtype, gen, scale=0.3)

        def fn(x, weight=None, bias=None):
            cl_tune = {"max_block_c": block_c, "stat_tiles": 3} if block_c else {}
            # forward: 4-position tiles, 3 per statistics program (several programs)
            fwd_tune = {}
            if block_c:
                fwd_tune = {"tile_elems": 4 * next_pow2(shape[1]), "stat_tiles": 3}
            gn_tune = {"block": 4 * block_c} if block_c else {}  # several position chunks
            if block:
                gn_tune["block"] = block
            coop_tune = {"enabled": int(coop), "min_spatial": 0}
            if item:
                coop_tune |= {"item_elems": item, "tile": min(item, 4096)}
            with (
                _tuned("gn", group_kernel=int(group_kernel), group_min_per_sm=0, **gn_tune),
                _tuned("gn_cl", **cl_tune),
                _tuned("gn_cl_fwd", **fwd_tune),
                _tuned("gn_coop", **coop_tune),
            ):
                out = group_norm_silu(x, groups, weight, bias, use_triton=True)
            if channels_last:
                return _ChannelsLastCheck.apply(out)
            return out

        def ref_fn(x, weight=None, bias=None):
            return ref.group_norm_silu_ref(x, groups, weight, bias)

        return fn, ref_fn, inputs

    tag = f"gn_silu {shape} G{groups}" + ("" if affine else " noaffine")
    tag += " channels-last" if channels_last else ""
    tag += f" block_c{block_c}" if block_c else ""
    tag += (" coop" + (f"{item}" if item else "")) if coop else ""
    tag += f" block{block}" if block else ""
    return tag + (" per-group" if group_kernel else ""), build


class _ChannelsLastCheck(torch.autograd.Function):
    """Identity that asserts channels-last memory of the output and of the incoming gradient
    (which the check then hands on as channels-last, as a channels-last network would)."""

    @staticmethod
    def forward(ctx, y):
        if not y.movedim(1, -1).is_contiguous():
            raise AssertionError(f"output lost channels-last memory: strides {y.stride()}")
        return y.view_as(y)

    @staticmethod
    def backward(ctx, dy):
        fmt = torch.channels_last if dy.ndim == 4 else torch.channels_last_3d
        return dy.contiguous(memory_format=fmt)


def cases(size: str = "tiny", dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> list[Case]:
    """The parity cases: ``tiny`` shapes for the CPU interpreter, ``medium`` for a GPU."""
    if size == "tiny":
        specs = [
            _modln_case(2, 5, 24, "sample"),
            _modln_case(2, 7, 20, "token"),
            _modln_case(2, 9, 24, "branch"),
            _modln_case(2, 6, 24, "sample", noncontig=True),
            _modln_case(3, 5, 12, "branch", lead=(2,)),
            _modln_case(3, 4, 16, "token", shared=True),
            _modln_case(2, 5, 16, "sample", lead=(2,), shared=True),
            _gated_case(2, 5, 24, "sample"),
            _gated_case(2, 7, 20, "token", bias=False),
            _gated_case(2, 9, 24, "branch", noncontig=True),
            _qk_case(2, (2, 2, 3), 3, 2, 12),
            _qk_case(1, (1, 3, 3), 2, 2, 10, strided=True),
            _qk_case(1, (1, 2, 3), 2, 2, 16),  # 8-aligned rows: the aligned-offset path
            _qk_case(2, (3, 1, 2), 2, 1, 12, per_sample=True),
            _qk_case(1, (1, 3, 4), 3, 6, 14, tile=32, hsplit=1),  # D2 masked, heads masked
            _qk_case(2, (1, 1, 5), 4, 4, 72, tile=600, hsplit=1, dw_reduce=True),
            _qk_case(1, (1, 2, 3), 3, 2, 12, hsplit=0, dw_reduce=True),
            _gn_case((2, 8, 3, 5, 7), 4),
            _gn_case((3, 6, 11, 9), 3, affine=False),
            _gn_case((2, 8, 3, 5, 7), 4, group_kernel=True),
            _gn_case((3, 6, 70), 6, affine=False, offset=50.0, group_kernel=True),
            _gn_case((2, 8, 3, 5, 7), 4, channels_last=True),
            _gn_case((3, 6, 11, 9), 3, affine=False, offset=50.0, channels_last=True),
            _gn_case((2, 12, 5, 7), 4, channels_last=True, block_c=8),
            _gn_case((2, 8, 3, 5, 7), 4, coop=True),
            _gn_case((2, 8, 3, 5, 7), 4, offset=30.0, block=16),  # 7 chunks per channel
            _gn_case((3, 6, 70), 3, affine=False, offset=50.0, coop=True),
        ]
    elif size == "medium":
        specs = [
            _modln_case(2, 333, 1728, "sample"),
            _modln_case(2, 257, 1152, "token"),
            _modln_case(2, 301, 3456, "branch"),
            _modln_case(3, 129, 1000, "sample", noncontig=True),
            _modln_case(3, 65, 72, "branch", lead=(2,)),
            _modln_case(4, 200, 1152, "token", shared=True),
            _gated_case(2, 333, 1728, "sample"),
            _gated_case(1, 257, 3456, "branch"),
            _gated_case(2, 131, 1152, "token", bias=False, noncontig=True),
            _qk_case(2, (3, 6, 10), 24, 24, 72),
            _qk_case(1, (2, 5, 7), 16, 8, 64, strided=True),
            _qk_case(1, (5, 4, 4), 4, 4, 128),
            _qk_case(3, (4, 6, 9), 12, 12, 72, per_sample=True),
            _qk_case(1, (3, 7, 11), 3, 5, 80, tile=1024, hsplit=1),
            _qk_case(2, (3, 6, 10), 24, 24, 72, hsplit=1),
            _qk_case(1, (3, 6, 10), 24, 8, 72, hsplit=0, dw_reduce=True),
            _qk_case(1, (3, 9, 10), 48, 48, 72, strided=True),
            _gn_case((2, 128, 5, 33, 31), 32),
            _gn_case((3, 512, 17, 19), 32, affine=False),
            _gn_case((1, 64, 9, 64, 64), 32, offset=20.0),
            _gn_case((4, 128, 5, 33, 31), 32, group_kernel=True),
            _gn_case((2, 64, 9, 64, 64), 32, offset=20.0, group_kernel=True),
            _gn_case((2, 128, 5, 33, 31), 32, channels_last=True),
            _gn_case((3, 512, 17, 19), 32, affine=False, channels_last=True),
            _gn_case((1, 96, 9, 64, 64), 32, offset=20.0, channels_last=True),
            _gn_case((2, 128, 5, 33, 31), 32, coop=True),  # whole channels per item
            _gn_case((3, 512, 17, 19), 32, affine=False, coop=True),
            _gn_case((1, 64, 9, 64, 64), 32, offset=20.0, coop=True),  # 2 chunks per channel
            _gn_case((2, 64, 5, 37, 41), 16, coop=True, item=1024),  # 8 chunks, ragged tail
        ]
    else:
        raise ValueError(f"size must be 'tiny' or 'medium', got {size!r}")
    return [
        Case(f"{tag} {str(dt).removeprefix('torch.')}", dt, build)
        for dt in dtypes
        for tag, build in specs
    ]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-300))


def run_case(case: Case, device: torch.device | str, seed: int = 0) -> Result:
    """Run one case: Triton path in the case's dtype vs the float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    fn, ref_fn, inputs = case.build(torch.device(device), case.dtype, gen)
    leaves = {k: v.detach().requires_grad_(True) for k, v in inputs.items()}
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves)
    out_ref = ref_fn(**ref_leaves)
    outs = out if isinstance(out, tuple) else (out,)
    outs_ref = out_ref if isinstance(out_ref, tuple) else (out_ref,)
    out_err = max(_rel(o, r) for o, r in zip(outs, outs_ref))
    if not all(torch.isfinite(o).all() for o in outs):
        out_err = float("nan")
    grads_out = [_rand(o.shape, o.device, torch.float32, gen) for o in outs_ref]
    grads_out = [g.to(o.dtype) for g, o in zip(grads_out, outs)]
    grads = torch.autograd.grad(outs, list(leaves.values()), grads_out)
    grads_ref = torch.autograd.grad(
        outs_ref, list(ref_leaves.values()), [g.double() for g in grads_out]
    )
    grad_err = {name: _rel(g, r) for name, g, r in zip(leaves, grads, grads_ref)}
    out_tol, grad_tol = TOLERANCE[case.dtype]
    return Result(case.name, out_err, grad_err, out_tol, grad_tol)
