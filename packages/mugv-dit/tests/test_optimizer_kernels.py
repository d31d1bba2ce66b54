"""The optimizer-step replacements against references: norms in float64, torch's foreach
AdamW for the fused one."""

from __future__ import annotations

import torch
from mugv_dit.megatron_patches.multi_tensor import (
    foreach_l2_norm,
    foreach_scale,
    install_foreach_multi_tensor_ops,
)
from mugv_dit.optim.fused_adam import enable_fused_adam


def test_foreach_l2_norm_is_the_norm_of_everything():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, 3, generator=g), torch.randn(11, generator=g), torch.zeros(0)]
    tensors.append(torch.randn(5, generator=g).to(torch.bfloat16))
    norm, per = foreach_l2_norm(2048, torch.zeros(1, dtype=torch.int), [tensors], False)
    ref = torch.cat([t.double().flatten() for t in tensors]).pow(2).sum().sqrt()
    assert per is None and norm.shape == (1,) and norm.dtype == torch.float32
    torch.testing.assert_close(norm.double()[0], ref, rtol=1e-6, atol=0)


def test_foreach_scale_in_place_and_into_other_tensors():
    g = torch.Generator().manual_seed(1)
    src = [torch.randn(4, generator=g), torch.randn(2, 3, generator=g)]
    expect = [t * 0.25 for t in src]
    dst = [torch.empty_like(t) for t in src]
    foreach_scale(2048, None, [src, dst], 0.25)
    for d, e in zip(dst, expect):
        torch.testing.assert_close(d, e, rtol=0, atol=0)
    foreach_scale(2048, None, [src, src], 0.25)
    for s, e in zip(src, expect):
        torch.testing.assert_close(s, e, rtol=0, atol=0)


def test_install_replaces_megatron_fallbacks():
    from megatron.core.optimizer import clip_grads

    install_foreach_multi_tensor_ops()
    assert clip_grads.l2_norm_impl is foreach_l2_norm
    assert clip_grads.multi_tensor_scale_impl is foreach_scale


class _Wrapper:
    """Megatron-style nesting: a wrapper holding the torch optimizer as `.optimizer`."""

    def __init__(self, optimizer):
        self.optimizer = optimizer


def test_fused_adam_follows_foreach_adam():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(17, 5)), torch.nn.Parameter(torch.randn(9))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt_a = torch.optim.AdamW(a, foreach=True, **kw)
    opt_b = torch.optim.AdamW(b, **kw)
    assert enable_fused_adam(_Wrapper(opt_b)) == 1
    assert opt_b.param_groups[0]["fused"] is True
    # a step counter left on the host (as a checkpoint load leaves it) moves to the device
    opt_b.state[b[0]]["step"] = torch.tensor(0.0)
    opt_b.state[b[0]]["exp_avg"] = torch.zeros_like(b[0])
    opt_b.state[b[0]]["exp_avg_sq"] = torch.zeros_like(b[0])
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        for pa, pb in zip(a, b):
            grad = torch.randn(pa.shape, generator=g)
            pa.grad, pb.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7)
    assert opt_b.state[b[0]]["step"].item() == 5
