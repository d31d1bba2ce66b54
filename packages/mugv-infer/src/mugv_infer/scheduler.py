"""Euler sampler of the rectified flow with the release's resolution/length shift.

Convention (as mugv-dit): ``x_s = (1 - s) x0 + s eps``, s in [0, 1] (1 = pure noise); the
model predicts ``v = x0 - eps``. The release samples ``N`` levels ``s_i = 1 - i/N``
(i = 0..N-1), shifts each by ``r s / (1 + (r - 1) s)`` with
``r = sqrt(H * W / 512^2) * sqrt(T_latent)`` (pixel height/width, latent frames), and steps
``x <- x + v * (s_i - s_{i+1})`` with ``s_N = 0``.

``numerics="release"`` reproduces the release's bf16 arithmetic of the plan (its H, W and
T_latent are bf16 tensors, so ``r`` is computed and rounded in bf16: 7.0 instead of 7.0156 at
1280x720 x 14 latents; the levels are float32 on a 0..1000 scale and the Euler steps use
their float32 differences); :func:`release_timesteps` is that plan. The DiT side of the same
option (the timestep rounded to bf16 before its embedding) is
``MUGDiTTransformer3DModel.timestep_round_dtype``, set by :func:`mugv_infer.release.apply_preset`.
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


NUM_TRAIN_TIMESTEPS = 1000
"""The release's timestep scale (levels s are fed to the DiT as ``1000 s``)."""


def release_shift_ratio(height: int, width: int, latent_frames: int) -> torch.Tensor:
    """The ratio ``r`` as the release computes it in bf16: ``sqrt(H W / 512^2)`` and
    ``sqrt(T_latent)`` from bf16 tensors, their product rounded to bf16 -> a 1-element bf16
    tensor (7.0 at 1280 x 720 x 14 latents, where the exact value is 7.0156)."""
    shift_ratio(height, width, latent_frames)  # the same argument checks
    h, w, t = (torch.tensor([float(v)], dtype=torch.bfloat16) for v in (height, width, latent_frames))
    ratio_space = (h * w / (512 * 512)).sqrt()
    ratio_time = (t / 1).sqrt()
    return ratio_space * ratio_time * 1.0


def release_timesteps(
    num_inference_steps: int, height: int, width: int, latent_frames: int
) -> torch.Tensor:
    """The release's float32 timesteps on the 0..1000 scale ``[N]``: ``t_i = 1000 (1 - i/N)``
    as float32, shifted with the bf16 ratio of :func:`release_shift_ratio` in float32
    (``r t / (1 + (r - 1) t)`` with ``t`` in [0, 1], ``r - 1`` rounded to bf16)."""
    ratio = release_shift_ratio(height, width, latent_frames)
    out = []
    for i in range(num_inference_steps):
        t = torch.tensor([(1.0 - i / num_inference_steps) * NUM_TRAIN_TIMESTEPS])
        tp = t / NUM_TRAIN_TIMESTEPS
        new = ratio * tp / (1 + (ratio - 1) * tp)
        out.append(new * NUM_TRAIN_TIMESTEPS)
    return torch.cat(out)


def level_for_timestep(t1000: torch.Tensor) -> torch.Tensor:
    """float32 levels ``s`` with ``float32(s) * 1000 == t`` exactly in float32 (the nearest
    such float32 to ``t / 1000``), so that the DiT, which scales its level by 1000 in
    float32, sees the release's timestep value (returned as float64)."""
    out = []
    for t in t1000.to(torch.float32).reshape(-1, 1):
        s = t / NUM_TRAIN_TIMESTEPS
        candidates = [s]
        up = down = s
        for _ in range(4):  # a few float32 ulps either side
            up = torch.nextafter(up, torch.full_like(up, 2.0))
            down = torch.nextafter(down, torch.full_like(down, -1.0))
            candidates += [up, down]
        exact = [c for c in candidates if bool(c * NUM_TRAIN_TIMESTEPS == t)]
        out.append(exact[0] if exact else s)
    return torch.cat(out).to(torch.float64)


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
    def __init__(
        self, base_resolution: int = 512 * 512, use_shift: bool = True, numerics: str = "exact"
    ):
        if numerics not in ("exact", "release"):
            raise ValueError(f"numerics {numerics!r} unknown; choose 'exact' or 'release'")
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.step_sizes: list[float] = []
        """``s_i - s_{i+1}`` of each step (float32 values under ``numerics="release"``)."""
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
        release = (
            self.config.numerics == "release"
            and self.config.use_shift
            and height is not None
            and sigma_max == 1.0
            and self.config.base_resolution == 512 * 512
        )
        if release:  # the release's float32 plan with its bf16 ratio
            t1000 = release_timesteps(n, height, width, latent_frames)
            dts = torch.cat([t1000[:-1] - t1000[1:], t1000[-1:]]) / NUM_TRAIN_TIMESTEPS
            s = level_for_timestep(t1000)
            self.step_sizes = [float(d) for d in dts]
        elif self.config.use_shift and height is not None:
            s = shift_sigma(
                s, shift_ratio(height, width, latent_frames, self.config.base_resolution)
            )
        sigmas = torch.cat([s, s.new_zeros(1)])
        if not release:
            self.step_sizes = [float(d) for d in sigmas[:-1] - sigmas[1:]]
        self.sigmas = sigmas.to(device)
        self.timesteps = s.to(device)
        self._index = 0

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict=True):
        """One Euler step ``x + v * (s_i - s_{i+1})``."""
        i = self._index
        if i >= len(self.timesteps):
            raise RuntimeError("step() called more often than set_timesteps() planned")
        dt = self.step_sizes[i]
        prev = (sample.float() + model_output.float() * dt).to(sample.dtype)
        self._index += 1
        return FlowEulerOutput(prev_sample=prev) if return_dict else (prev,)

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor):
        """``(1 - s) x0 + s eps``."""
        s = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
        return (1 - s) * x0 + s * noise
