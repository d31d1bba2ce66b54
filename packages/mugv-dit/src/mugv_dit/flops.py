"""Model FLOPs of MUG-DiT (matmuls and attention; elementwise work is not counted).

A training step counts 3x the forward FLOPs (forward + backward for inputs and weights);
activation recompute is not counted (model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

from mugv_dit.config import ModelConfig


def forward_flops(cfg: ModelConfig, video_tokens: int, text_tokens: int, batch: int = 1) -> float:
    """Forward FLOPs for ``batch`` samples of ``video_tokens`` (+2 start/end) and
    ``text_tokens`` text tokens each."""
    h, n, L, f = cfg.hidden_size, video_tokens + 2, text_tokens, cfg.ffn_size
    self_attn = 2 * n * h * 4 * h + 2 * 2 * n * n * h
    cross = 2 * n * h * 2 * h + 2 * L * h * 2 * h + 2 * 2 * n * L * h
    mlp = 2 * 2 * n * h * f
    pt, ph, pw = cfg.patch_size
    patch = pt * ph * pw
    io = 2 * video_tokens * h * (cfg.in_channels * patch + cfg.out_channels * patch)
    text = 2 * L * (cfg.text_dim * h + h * h)
    return float(batch * (cfg.num_layers * (self_attn + cross + mlp) + io + text))


def train_step_flops(cfg: ModelConfig, video_tokens: int, text_tokens: int, batch: int = 1):
    """Model FLOPs of forward + backward."""
    return 3.0 * forward_flops(cfg, video_tokens, text_tokens, batch)
