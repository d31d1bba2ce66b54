"""Exponential moving average of model parameters (fp32 shadow copy)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after each optimiser step."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in params.items()}

    @classmethod
    def of(cls, model: nn.Module, decay: float) -> EMA:
        return cls({k: p for k, p in model.named_parameters()}, decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
