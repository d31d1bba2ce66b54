"""LPIPS (VGG16 variant) loaded from LOCAL weights only; no downloads.

The weights file (safetensors or a torch state dict) holds torchvision-style VGG16 names
``features.{i}.{weight,bias}`` (layers 0..28) and the lpips package's linear heads
``lin{k}.model.1.weight`` (k = 0..4). ``combine_weights`` builds such a file from
torchvision's ``vgg16-*.pth`` and lpips' ``weights/v0.1/vgg.pth``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# VGG16 ``features`` layout: conv widths, "M" = max-pool. Taps after relu1_2 .. relu5_3.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # index of the ReLU ending each stage in ``features``
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """Learned perceptual distance between images in [-1, 1]; frozen, eval mode."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights {path} do not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model = cls()
        mapped = {}
        for k, v in state.items():
            if k.startswith("lin") and ".model.1." in k:
                mapped[f"lins.{int(k[3])}.weight"] = v
            elif k.startswith("features."):
                mapped[k] = v
        missing, _ = model.load_state_dict(mapped, strict=False)
        missing = [m for m in missing if m not in ("shift", "scale")]
        if missing:
            raise ValueError(f"LPIPS weights {path} lack {missing[:5]}")
        return model

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
            if i == _TAPS[-1]:
                break
        return out

    def forward(self, x_NCHW: torch.Tensor, y_NCHW: torch.Tensor) -> torch.Tensor:
        """Distance per image ``[N]``."""
        total = 0.0
        for lin, fx, fy in zip(self.lins, self._taps(x_NCHW), self._taps(y_NCHW)):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total


def combine_weights(vgg_path: str | Path, lin_path: str | Path, out: str | Path) -> Path:
    """Write one LPIPS weights file from torchvision VGG16 and lpips linear-head files."""
    from safetensors.torch import save_file

    vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in vgg.items() if k.startswith("features.")}
    state.update({k: v for k, v in lin.items() if k.startswith("lin")})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return Path(out)


def lpips_distance(model: LPIPS, x_BCTHW: torch.Tensor, y_BCTHW: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS over all frames of two videos ``[B, 3, T, H, W]``."""
    b, c, t, h, w = x_BCTHW.shape
    x = x_BCTHW.transpose(1, 2).reshape(b * t, c, h, w)
    y = y_BCTHW.transpose(1, 2).reshape(b * t, c, h, w)
    if h < 16 or w < 16:
        x = F.interpolate(x, size=(max(h, 16), max(w, 16)), mode="bilinear")
        y = F.interpolate(y, size=(max(h, 16), max(w, 16)), mode="bilinear")
    return model(x, y).mean()
