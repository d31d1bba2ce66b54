"""Fused Triton kernels for the mugv DiT and VAE, with exact PyTorch fallbacks.

Every op takes ``use_triton``: ``None`` = Triton on CUDA tensors when triton imports, the
PyTorch reference otherwise; ``True`` = Triton (CPU tensors only under ``TRITON_INTERPRET=1``);
``False`` = reference. References live in :mod:`mugv_kernels.reference`.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from mugv_kernels._dispatch import triton_available
from mugv_kernels.channels_last import bias_residual
from mugv_kernels.group_norm import group_norm_silu
from mugv_kernels.modulated_norm import gated_residual_modulated_norm, modulated_layer_norm
from mugv_kernels.modules import GroupNormSiLU, ModulatedLayerNorm, QKRMSNormRoPE3D
from mugv_kernels.qk_norm_rope import qk_rmsnorm_rope3d
from mugv_kernels.rope import default_split, rope3d_angles, rope3d_frequencies

try:
    __version__ = _version("mugv-kernels")
except PackageNotFoundError:  # source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"

__all__ = [
    "GroupNormSiLU",
    "ModulatedLayerNorm",
    "QKRMSNormRoPE3D",
    "__version__",
    "bias_residual",
    "default_split",
    "gated_residual_modulated_norm",
    "group_norm_silu",
    "modulated_layer_norm",
    "qk_rmsnorm_rope3d",
    "rope3d_angles",
    "rope3d_frequencies",
    "triton_available",
]
