"""Run under TRITON_INTERPRET=1 (see test_channels_last.py): the channels-last forward with
``in_bias`` / ``inplace`` and ``bias_residual`` against float64 torch. Prints one JSON line
``{case: max abs error}``."""

from __future__ import annotations

import json
import os

assert os.environ.get("TRITON_INTERPRET") == "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mugv_kernels import bias_residual, group_norm_silu  # noqa: E402
from mugv_kernels._launch import TUNING  # noqa: E402

CASES = [  # (shape, groups, tile_elems): small tiles -> several statistics programs
    ((2, 16, 5, 7), 4, 8192),
    ((2, 16, 5, 7), 4, 64),
    ((1, 32, 3, 9, 10), 8, 128),
    ((2, 12, 11, 9), 4, 64),  # 3 channels per group, 12 channels: padded tiles
    ((1, 6, 13, 5), 3, 32),
]


def _ref(x, groups, w, b, in_bias, eps):
    view = (1, -1, *([1] * (x.ndim - 2)))
    xb = x.double() + in_bias.double().view(view)
    return F.silu(F.group_norm(xb, groups, w.double(), b.double(), eps))


torch.manual_seed(0)
errors: dict[str, float] = {}
for shape, groups, tile in CASES:
    TUNING["gn_cl_fwd"]["tile_elems"] = tile
    TUNING["gn_cl_fwd"]["stat_tiles"] = 3
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    c = shape[1]
    x = (torch.randn(shape) * 3 + 20).contiguous(memory_format=fmt)
    w, b, ib = torch.randn(c), torch.randn(c), torch.randn(c) * 4
    ref = _ref(x, groups, w, b, ib, 1e-5)
    tag = f"{shape} G{groups} t{tile}"
    with torch.no_grad():
        out = group_norm_silu(x, groups, w, b, eps=1e-5, in_bias=ib, use_triton=True)
        assert out.is_contiguous(memory_format=fmt) and out.data_ptr() != x.data_ptr()
        errors[f"gn in_bias {tag}"] = float((out.double() - ref).abs().max())
        y = x.clone(memory_format=fmt)
        out = group_norm_silu(y, groups, w, b, eps=1e-5, in_bias=ib, inplace=True, use_triton=True)
        assert out.data_ptr() == y.data_ptr()
        errors[f"gn inplace {tag}"] = float((out.double() - ref).abs().max())
        plain = group_norm_silu(x, groups, None, None, eps=1e-5, use_triton=True)
        ref0 = F.silu(F.group_norm(x.double(), groups, None, None, 1e-5))
        errors[f"gn noaffine {tag}"] = float((plain.double() - ref0).abs().max())
        r = torch.randn_like(x)
        view = (1, -1, *([1] * (x.ndim - 2)))
        ref_r = x.double() + ib.double().view(view) + r.double()
        out = bias_residual(x, ib, r, use_triton=True)
        assert out.is_contiguous(memory_format=fmt)
        errors[f"res {tag}"] = float((out.double() - ref_r).abs().max())
        y = x.clone(memory_format=fmt)
        out = bias_residual(y, ib, r, inplace=True, use_triton=True)
        assert out.data_ptr() == y.data_ptr()
        errors[f"res inplace {tag}"] = float((out.double() - ref_r).abs().max())
    # training with in_bias: gradients of x, weight, bias and in_bias (float64 autograd)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, ib)]
    out = group_norm_silu(leaves[0], groups, *leaves[1:3], eps=1e-5, in_bias=leaves[3],
                          use_triton=True)  # fmt: skip
    dy = torch.randn_like(out)
    out.backward(dy)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, b, ib)]
    ref64 = _ref(leaves64[0], groups, leaves64[1], leaves64[2], leaves64[3], 1e-5)
    ref64.backward(dy.double())
    errors[f"gn grad out {tag}"] = float((out.detach().double() - ref64.detach()).abs().max())
    for name, a, b64 in zip(("x", "w", "b", "in_bias"), leaves, leaves64, strict=True):
        scale = float(b64.grad.abs().max().clamp_min(1.0))
        errors[f"gn grad {name} {tag}"] = float((a.grad.double() - b64.grad).abs().max()) / scale
print(json.dumps(errors))
