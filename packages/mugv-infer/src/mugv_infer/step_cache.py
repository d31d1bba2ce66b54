"""Step cache: reuse the blocks' residual between denoising steps (TeaCache/MagCache style).

At each step the relative L1 change of the blocks' input tokens (the patch-embedded noisy
latents) against the previous step is accumulated; while the sum stays below ``threshold``
the blocks are skipped and the last computed residual (blocks' output minus input) is added
instead. A threshold of 0 never skips (exact). The deviation this causes is measured by the
benchmark (max / mean abs of the final latent, PSNR of the decoded video).
"""

from __future__ import annotations

import torch


class StepCache:
    """Per-generation state; :meth:`reset` before each new generation."""

    def __init__(self, threshold: float = 0.1, warmup_steps: int = 1):
        if threshold < 0:
            raise ValueError(f"step cache threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.warmup_steps = warmup_steps
        self.reset()

    def reset(self) -> None:
        self.previous: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.accumulated = 0.0
        self.calls = 0
        self.skipped = 0

    def can_skip(self, x_BNC: torch.Tensor, mods=None) -> bool:
        """Whether this call may reuse the cached residual (updates the running change)."""
        self.calls += 1
        prev, self.previous = self.previous, x_BNC.detach()
        if (
            prev is None
            or self.residual is None
            or prev.shape != x_BNC.shape
            or self.calls <= self.warmup_steps
        ):
            self.accumulated = 0.0
            return False
        change = (x_BNC - prev).abs().float().mean() / prev.abs().float().mean().clamp_min(1e-12)
        self.accumulated += float(change)
        if self.accumulated < self.threshold:
            self.skipped += 1
            return True
        self.accumulated = 0.0
        return False

    def reuse(self, x_BNC: torch.Tensor) -> torch.Tensor:
        return x_BNC + self.residual

    def store(self, x_in_BNC: torch.Tensor, x_out_BNC: torch.Tensor) -> None:
        self.residual = (x_out_BNC - x_in_BNC).detach()
