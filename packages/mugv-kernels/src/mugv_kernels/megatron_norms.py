"""LayerNorm / RMSNorm modules usable under Megatron-Core sequence parallelism.

Megatron-Core's local (torch) norm refuses ``sequence_parallel`` unless apex or
transformer-engine is installed. Under sequence parallelism each tensor-parallel rank normalises
its own slice of the sequence with a replicated weight, so the weight's gradient is a partial
sum that Megatron all-reduces across the tensor-parallel group for every parameter carrying the
attribute ``sequence_parallel = True``. These modules set that attribute and otherwise compute
a plain norm, so they need nothing beyond torch.

They take Megatron's norm-builder convention ``(config, hidden_size, eps=1e-5, ...)`` and read
only attributes of ``config`` (``sequence_parallel``, ``layernorm_zero_centered_gamma``,
``params_dtype``, ``normalization``); megatron-core itself is never imported here. Use them as
``ModuleSpec(module=SequenceParallelLayerNorm)`` or ``SequenceParallelNorm`` (chooses by
``config.normalization``) in a layer spec's norm slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _config_flags(config, zero_centered_gamma: bool) -> tuple[bool, bool, torch.dtype]:
    sequence_parallel = bool(getattr(config, "sequence_parallel", False))
    zero_centered = bool(getattr(config, "layernorm_zero_centered_gamma", False)) or bool(
        zero_centered_gamma
    )
    dtype = getattr(config, "params_dtype", None) or torch.float32
    return sequence_parallel, zero_centered, dtype


class _SequenceParallelNormBase(nn.Module):
    def __init__(
        self,
        config,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str | None = None,
        *,
        bias: bool,
    ):
        super().__init__()
        del persist_layer_norm, normalization  # accepted for Megatron's builder convention
        sequence_parallel, self.zero_centered_gamma, dtype = _config_flags(
            config, zero_centered_gamma
        )
        self.hidden_size = int(hidden_size)
        self.eps = float(eps)
        init = torch.zeros if self.zero_centered_gamma else torch.ones
        self.weight = nn.Parameter(init(self.hidden_size, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.hidden_size, dtype=dtype)) if bias else None
        self.sequence_parallel = sequence_parallel
        for param in self.parameters():
            param.sequence_parallel = sequence_parallel

    def effective_weight(self) -> torch.Tensor:
        """The multiplier actually applied (``1 + weight`` with zero-centred gamma)."""
        return self.weight + 1 if self.zero_centered_gamma else self.weight

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, eps={self.eps}, sequence_parallel={self.sequence_parallel}, "
            f"zero_centered_gamma={self.zero_centered_gamma}"
        )


class SequenceParallelLayerNorm(_SequenceParallelNormBase):
    """LayerNorm with weight and bias marked ``sequence_parallel`` (fp32 statistics)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, *args, **kwargs):
        super().__init__(config, hidden_size, eps, *args, bias=True, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        out = F.layer_norm(x.float(), (self.hidden_size,), w.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class SequenceParallelRMSNorm(_SequenceParallelNormBase):
    """RMSNorm with weight marked ``sequence_parallel`` (fp32 statistics)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, *args, **kwargs):
        super().__init__(config, hidden_size, eps, *args, bias=False, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + self.eps)
        return (out * self.effective_weight().float()).to(x.dtype)


class SequenceParallelNorm:
    """Builder choosing by ``config.normalization`` ("LayerNorm" or "RMSNorm"), like
    Megatron-Core's ``WrappedTorchNorm``, but allowing sequence parallelism."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, *args, **kwargs):
        kind = getattr(config, "normalization", "LayerNorm")
        if kind == "LayerNorm":
            return SequenceParallelLayerNorm(config, hidden_size, eps, *args, **kwargs)
        if kind == "RMSNorm":
            return SequenceParallelRMSNorm(config, hidden_size, eps, *args, **kwargs)
        raise ValueError(f"config.normalization must be 'LayerNorm' or 'RMSNorm', got {kind!r}")
