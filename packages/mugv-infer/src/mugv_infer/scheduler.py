"""Euler sampler of the rectified flow with the release's resolution/length shift.

Convention (as mugv-dit): ``x_s = (1 - s) x0 + s eps``, s in [0, 1] (1 = pure noise); the
model predicts ``v = x0 - eps``. The release samples ``N`` levels ``s_i = 1 - i/N``
(i = 0..N-1), shifts each by ``r s / (1 + (r - 1) s)`` with
``r = sqrt(H * W / 512^2) * sqrt(T_latent)`` (pixel height/width, latent frames), and steps
``x <- x + v * (s_i - s_{i+1})`` with ``s_N = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput


def shift_ratio(height: int, width: int, latent_frames: int, base_resolution: int = 512 * 512):
    """``sqrt(H*W / base) * sqrt(T_latent)``."""
    if height <= 0 or width <= 0 or latent_frames <= 0:
        raise ValueError(f"bad sample size H={height} W={width} T_latent={latent_frames}")
    return math.sqrt(height * width / base_resolution) * math.sqrt(latent_frames)


def shift_sigma(sigma: torch.Tensor, ratio: float) -> torch.Tensor:
    return ratio * sigma / (1 + (ratio - 1) * sigma)


@dataclass
class FlowEulerOutput(BaseOutput):
    prev_sample: torch.Tensor


class MUGVFlowEulerScheduler(SchedulerMixin, ConfigMixin):
    """diffusers-style scheduler: ``set_timesteps`` then ``step`` once per level.

    ``timesteps`` holds the noise levels s (in [0, 1]) the model is called at; ``sigmas`` the
    same levels followed by the final 0.
    """

    order = 1

    @register_to_config
    def __init__(self, base_resolution: int = 512 * 512, use_shift: bool = True):
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self._index = 0

    def set_timesteps(
        self,
        num_inference_steps: int,
        device=None,
        *,
        height: int | None = None,
        width: int | None = None,
        latent_frames: int | None = None,
        sigma_max: float = 1.0,
    ) -> None:
        """``sigma_max`` < 1 starts part-way (SDEdit: the enhancer uses 0.3, unshifted)."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not 0.0 < sigma_max <= 1.0:
            raise ValueError(f"sigma_max must be in (0, 1], got {sigma_max}")
        n = num_inference_steps
        s = sigma_max * (1.0 - torch.arange(n, dtype=torch.float64) / n)
        if self.config.use_shift and height is not None:
            s = shift_sigma(
                s, shift_ratio(height, width, latent_frames, self.config.base_resolution)
            )
        self.sigmas = torch.cat([s, s.new_zeros(1)]).to(device)
        self.timesteps = s.to(device)
        self._index = 0

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict=True):
        """One Euler step ``x + v * (s_i - s_{i+1})``."""
        i = self._index
        if i >= len(self.timesteps):
            raise RuntimeError("step() called more often than set_timesteps() planned")
        dt = float(self.sigmas[i] - self.sigmas[i + 1])
        prev = (sample.float() + model_output.float() * dt).to(sample.dtype)
        self._index += 1
        return FlowEulerOutput(prev_sample=prev) if return_dict else (prev,)

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor):
        """``(1 - s) x0 + s eps``."""
        s = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
        return (1 - s) * x0 + s * noise
