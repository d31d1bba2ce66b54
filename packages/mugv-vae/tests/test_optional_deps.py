"""Lighter installs: tensorboard is the optional ``train`` extra of mugv-vae (mugv-infer needs
the VAE without training)."""

from __future__ import annotations

import subprocess
import sys


def test_checkpoint_load_and_decode_without_tensorboard(tiny_checkpoint):
    """In a fresh interpreter with tensorboard blocked, the VAE loads and decodes (what
    mugv-infer does) and its CLI imports."""
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"
        "sys.modules['torch.utils.tensorboard'] = None\n"
        "import torch, mugv_vae.cli\n"
        "from mugv_vae.model import MUGVAE\n"
        f"vae = MUGVAE.from_pretrained({str(tiny_checkpoint)!r}, device='cpu')\n"
        "z = torch.zeros(1, vae.config.latent_channels, 1, 2, 2)\n"
        "x = vae.decode(z)\n"
        "assert x.shape[-2:] == (16, 16) and torch.isfinite(x).all(), x.shape\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
