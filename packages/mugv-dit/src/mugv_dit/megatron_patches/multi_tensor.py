"""Patch: Megatron-Core's grad-norm and grad-scale fallbacks through torch's foreach ops.

Without apex / transformer-engine Megatron-Core 0.16 falls back to local replacements of apex's
multi-tensor kernels, chosen at import time into module globals: the grad norm reads every
parameter's norm back to the host one at a time (a device sync per tensor, the GPU idles) and
the grad scaling launches two kernels per tensor. :func:`install_foreach_multi_tensor_ops`
replaces those globals (only when they are the slow fallbacks; apex / TE kernels are left
alone) with :func:`foreach_l2_norm` / :func:`foreach_scale`: the same functions through
``torch._foreach_norm`` / ``torch._foreach_mul``, with no host sync. It is process-wide and
stays installed (every Megatron optimizer of the process benefits); Megatron exposes no
argument to choose these kernels.

Megatron symbols touched: :data:`MEGATRON_SYMBOLS`. Tests: ``tests/test_optimizer_kernels.py``
(against float64 references and Megatron's own fallbacks) and
``tests/test_megatron_patches.py``.
"""

from __future__ import annotations

import torch
from megatron.core import utils
from megatron.core.optimizer import clip_grads
from megatron.core.optimizer import optimizer as megatron_optimizer

MEGATRON_SYMBOLS = (
    "megatron.core.optimizer.clip_grads.l2_norm_impl",
    "megatron.core.optimizer.clip_grads.multi_tensor_scale_impl",
    "megatron.core.optimizer.optimizer.multi_tensor_scale_impl",
    "megatron.core.utils.local_multi_tensor_l2_norm",
    "megatron.core.utils.local_multi_tensor_scale",
)


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Drop-in for apex's ``multi_tensor_l2norm``: ``(norm [1] float32, None)`` over all tensors
    of ``tensor_lists[0]``, computed on their device without a host round trip."""
    tensors = [t for t in tensor_lists[0] if t.numel()]
    if not tensors:
        return torch.zeros(1, dtype=torch.float32, device=noop_flag.device), None
    norms = torch._foreach_norm([t.float() if t.dtype != torch.float32 else t for t in tensors])
    total = torch.linalg.vector_norm(torch.stack(norms))
    return total.reshape(1).to(torch.float32), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """Drop-in for apex's ``multi_tensor_scale``: ``dst = src * scale`` for paired lists."""
    src, dst = tensor_lists[0], tensor_lists[1]
    if not src:
        return
    if all(s is d for s, d in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
        return
    torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def install_foreach_multi_tensor_ops() -> bool:
    """Route Megatron-Core's grad-norm and grad-scale through :func:`foreach_l2_norm` /
    :func:`foreach_scale` when it is using its slow local fallbacks. Returns True when it
    replaced them (apex or transformer-engine kernels are left alone)."""
    if clip_grads.l2_norm_impl is not utils.local_multi_tensor_l2_norm:
        return False
    clip_grads.l2_norm_impl = foreach_l2_norm
    clip_grads.multi_tensor_scale_impl = foreach_scale
    if megatron_optimizer.multi_tensor_scale_impl is utils.local_multi_tensor_scale:
        megatron_optimizer.multi_tensor_scale_impl = foreach_scale
    return True
