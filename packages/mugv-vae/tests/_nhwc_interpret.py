"""Run under TRITON_INTERPRET=1 (see test_nhwc_ops.py): the channels-last kernels against
float64 torch, then a tiny model with them against the plain path. Prints one JSON line."""

from __future__ import annotations

import json
import os

assert os.environ.get("TRITON_INTERPRET") == "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mugv_vae.config import VAERuntime, tiny_config  # noqa: E402
from mugv_vae.model import MUGVAE, nhwc_ops  # noqa: E402

torch.manual_seed(0)
errors = {}
with torch.no_grad():
    for shape, groups in [((2, 16, 5, 7), 4), ((1, 32, 3, 9, 10), 8), ((2, 8, 33, 17), 4)]:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x = (torch.randn(shape) * 3 + 5).contiguous(memory_format=fmt)
        norm = torch.nn.GroupNorm(groups, shape[1], eps=1e-5)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        conv_bias = torch.randn(shape[1])
        view = (1, -1, *([1] * (len(shape) - 2)))
        assert nhwc_ops.kernels_apply(x, groups)
        out = nhwc_ops.group_norm_silu_nhwc(x, norm, conv_bias)
        assert out.is_contiguous(memory_format=fmt)
        ref = F.silu(norm.double()((x + conv_bias.view(view)).double())).float()
        norm.float()
        errors[f"gn{shape}"] = float((out - ref).abs().max())
        r = torch.randn_like(x)
        out = nhwc_ops.bias_residual_nhwc(x.clone(), conv_bias, r)
        errors[f"res{shape}"] = float((out - (x + conv_bias.view(view) + r)).abs().max())
    phases = torch.randn(2, 4 * 16, 5, 8).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(16)
    inter = nhwc_ops.phase_interleave(phases, 16, bias)
    assert inter.is_contiguous(memory_format=torch.channels_last)
    ref = torch.empty(2, 16, 8, 14)
    for a in (0, 1):
        for b in (0, 1):
            p = 2 * a + b
            ref[:, :, a::2, b::2] = phases[:, p * 16 : (p + 1) * 16, a : a + 4, b : b + 7]
    errors["interleave"] = float((inter - ref - bias.view(1, -1, 1, 1)).abs().max())
    plain = MUGVAE(tiny_config()).eval()
    update = {"channels_last": True, "fused_nhwc_ops": True, "fold_upsample_conv": True}
    fast = MUGVAE(tiny_config(), VAERuntime(**update)).eval()
    fast.load_state_dict(plain.state_dict())
    video = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    z = plain.encode(video)
    errors["encode"] = float((fast.encode(video) - z).abs().max())
    errors["decode"] = float((fast.decode(z, window=1) - plain.decode(z, window=1)).abs().max())
print(json.dumps(errors))
