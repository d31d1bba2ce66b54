"""Inception-I3D (Carreira & Zisserman 2017) in PyTorch: the video features of FVD.

The layout and parameter names follow the widely used PyTorch port of the Kinetics-400 I3D
(``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``...),
so its converted weights load as they are. Weights come only from a local ``.safetensors``
file (no pickles, no TorchScript, no downloads); a missing file is an error naming the path.

Convolutions and max-pools pad like TensorFlow's ``SAME`` (asymmetric, computed from the input
size), as the original. Input: RGB video ``[B, 3, T, H, W]`` in [-1, 1], 224 x 224, 16 frames
for FVD. Outputs (:meth:`InceptionI3d.features`): ``logits`` (400, averaged over time: what
FVD uses) or ``pool`` (1024, the average-pooled ``Mixed_5c``). The final average pool is
adaptive, which equals the original's fixed ``[2, 7, 7]`` window on 16 x 224 x 224 input and
lets tests run on small frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 400
FEATURE_KINDS = ("logits", "pool")

# (name, in_channels, branch widths [b0, b1a, b1b, b2a, b2b, b3b]) of each Inception block
_INCEPTION = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TensorFlow ``SAME`` padding of the last three dims (the extra pixel goes at the end)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[-3:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm (eps 1e-3) + ReLU, with ``SAME`` padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


class InceptionI3d(nn.Module):
    """The RGB Inception-I3D up to its 400-way Kinetics logits (eval mode, frozen)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = Inception(*_INCEPTION["Mixed_3b"])
        self.Mixed_3c = Inception(*_INCEPTION["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, Inception(*_INCEPTION[name]))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = Inception(*_INCEPTION["Mixed_5b"])
        self.Mixed_5c = Inception(*_INCEPTION["Mixed_5c"])
        self.logits = Unit3D(1024, num_classes, batch_norm=False, activation=False, bias=True)
        self.requires_grad_(False)
        self.eval()

    _TRUNK = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
        "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c",
        "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
    )  # fmt: skip

    @classmethod
    def from_file(cls, path: str | Path) -> InceptionI3d:
        """Weights from a local ``.safetensors`` file; every parameter and buffer must be there
        (``num_batches_tracked`` may be absent), no key may be left over."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights {path} do not exist (a local .safetensors file)")
        if path.suffix != ".safetensors":
            raise ValueError(f"I3D weights {path}: only .safetensors files are read")
        state = load_file(str(path))
        classes = state["logits.conv3d.weight"].shape[0] if "logits.conv3d.weight" in state else 0
        with torch.device("meta"):  # no random init of 12M parameters that are replaced
            model = cls(num_classes=classes or NUM_CLASSES)
        expected = set(model.state_dict())
        counters = {k for k in expected if k.endswith("num_batches_tracked")}
        missing = sorted(expected - counters - state.keys())
        extra = sorted(state.keys() - expected)
        if missing or extra:
            raise ValueError(
                f"I3D weights {path} do not fit Inception-I3D: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            )
        state = {**{k: torch.zeros((), dtype=torch.long) for k in counters}, **state}
        model.load_state_dict(state, assign=True)
        return model.eval()

    def trunk(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        for name in self._TRUNK:
            x_BCTHW = getattr(self, name)(x_BCTHW)
        return x_BCTHW

    @torch.no_grad()
    def features(self, video_BCTHW: torch.Tensor, kind: str = "logits") -> torch.Tensor:
        """``[B, 400]`` time-averaged logits or ``[B, 1024]`` pooled features."""
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown I3D feature kind {kind!r}; choose one of {FEATURE_KINDS}")
        x = self.trunk(video_BCTHW)
        t = min(2, x.shape[2])  # the original's [2, 7, 7] average pool, stride 1
        x = F.avg_pool3d(x, (t, x.shape[3], x.shape[4]), stride=1)
        if kind == "pool":
            return x.mean(dim=(2, 3, 4))
        return self.logits(x).mean(dim=(2, 3, 4))
