"""CLIP score of generated videos against their prompts (open-clip-torch, local weights).

Per video: ``frames`` frames evenly spaced over the clip (first and last included), each
through the model's own image preprocessing; score = ``100 * max(cos(image, text), 0)``
(as torchmetrics' CLIPScore), averaged over the frames; the result is the mean over videos.

Weights only from a local path: a ``.safetensors`` / ``.bin`` / ``.pt`` file of the named
architecture (``--clip-model ViT-B-32``), or a folder holding ``open_clip_config.json`` and its
weights (open_clip's ``local-dir:``). Nothing is downloaded; a missing path is an error
naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


class ClipScorer:
    """An open_clip model with its preprocessing and tokenizer."""

    def __init__(self, model, preprocess, tokenizer, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.preprocess, self.tokenizer, self.device = preprocess, tokenizer, device

    @classmethod
    def from_local(cls, weights: str | Path, model_name: str = "ViT-B-32", device: str = "cpu"):
        try:
            import open_clip
        except ImportError:
            raise ValueError(
                "CLIP score needs open-clip-torch: pip install 'mugv[eval]'"
            ) from None
        path = Path(weights).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"CLIP weights {path} do not exist (a local file or folder)")
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise FileNotFoundError(
                    f"CLIP weights folder {path} has no open_clip_config.json"
                )
            name = f"local-dir:{path}"
            model, _, preprocess = open_clip.create_model_and_transforms(name)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(path), load_weights=True
            )
        return cls(model, preprocess, open_clip.get_tokenizer(name if path.is_dir() else model_name),
                   device)  # fmt: skip

    @torch.no_grad()
    def score(self, frames_THWC: np.ndarray, prompt: str, frames: int = 8) -> float:
        from PIL import Image

        t = frames_THWC.shape[0]
        idx = np.unique(np.linspace(0, t - 1, num=min(frames, t)).round().astype(int))
        images = torch.stack([self.preprocess(Image.fromarray(frames_THWC[i])) for i in idx])
        img = self.model.encode_image(images.to(self.device)).float()
        txt = self.model.encode_text(self.tokenizer([prompt]).to(self.device)).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return float((100 * (img @ txt.T).clamp_min(0)).mean())


def clip_scores(scorer: ClipScorer, videos: Sequence, frames: int = 8) -> dict:
    """``{"clip_score": mean, "videos": [{key, prompt, clip_score}]}``; every video needs a
    prompt (an error names the first without)."""
    rows = []
    for v in videos:
        if not v.prompt:
            raise ValueError(
                f"CLIP score: video {v.key!r} has no prompt (give --prompts FILE, a JSON object "
                "{video file name: prompt}, or a clip-shard dataset with captions)"
            )
        rows.append({"key": v.key, "prompt": v.prompt,
                     "clip_score": scorer.score(v.frames, v.prompt, frames)})  # fmt: skip
    if not rows:
        raise ValueError("CLIP score: no videos")
    return {"clip_score": sum(r["clip_score"] for r in rows) / len(rows), "videos": rows}
