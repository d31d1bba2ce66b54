"""Aesthetic score: CLIP image embedding (transformers, local folder) + LAION-style MLP head.

The head is the LAION "improved aesthetic predictor" MLP (Linear D->1024 -> 128 -> 64 -> 16
-> 1, dropouts between) on the L2-normalised CLIP image embedding; its weights are a local
``.pth`` / ``.safetensors`` file with keys ``layers.{0,2,4,6,7}.{weight,bias}``. Nothing is
downloaded. Shape legend: B images, 3 channels, S crop size, D embedding size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from mugv_data.config import AestheticConfig
from mugv_data.stages.base import Clip, RangeFilter, Resources

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def clip_preprocess(frames_BHW3: np.ndarray, size: int) -> np.ndarray:
    """CLIP preprocessing: bicubic resize of the short side to ``size``, centre crop, scale to
    [0, 1], normalise. Returns float32 [B, 3, S, S]."""
    out = []
    for f in frames_BHW3:
        h, w = f.shape[:2]
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        r = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_CUBIC)
        top, left = (nh - size) // 2, (nw - size) // 2
        c = r[top : top + size, left : left + size].astype(np.float32) / 255.0
        out.append(((c - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1))
    return np.stack(out)


def build_head(dim: int):
    """The LAION aesthetic MLP for embeddings of size ``dim``."""
    import torch.nn as nn

    class AestheticHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(dim, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, emb_BD):
            return self.layers(emb_BD).squeeze(-1)

    return AestheticHead()


def load_head_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"filters.aesthetic.head_path {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


class AestheticScorer:
    """CLIP vision tower + projection + aesthetic head, batched, on one device."""

    def __init__(self, model, head, device: str = "cuda") -> None:
        """``model``: a transformers ``CLIPVisionModelWithProjection``; ``head``: the MLP."""
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn("filters.aesthetic.device=cuda but no GPU: running on CPU", stacklevel=2)
            device = "cpu"
        self.torch = torch
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.head = head.eval().to(self.device)
        self.size = int(model.config.image_size)

    @classmethod
    def from_paths(
        cls, clip_path: str | Path, head_path: str | Path, device: str = "cuda"
    ) -> AestheticScorer:
        """Load the CLIP folder and the head weights from local paths."""
        from transformers import CLIPVisionModelWithProjection

        if not Path(clip_path).is_dir():
            raise ValueError(f"filters.aesthetic.clip_path {clip_path} is not a local model folder")
        model = CLIPVisionModelWithProjection.from_pretrained(str(clip_path), local_files_only=True)
        dim = int(model.config.projection_dim)
        head = build_head(dim)
        try:
            head.load_state_dict(load_head_state(head_path))
        except RuntimeError as e:
            raise ValueError(
                f"{head_path}: not a LAION aesthetic head for {dim}-d embeddings: {e}"
            ) from e
        return cls(model, head, device)

    def embed_and_score(self, frames_BHW3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit-norm embeddings float32 [B, D], aesthetic scores float32 [B])."""
        torch = self.torch
        dtype = next(self.model.parameters()).dtype
        pix_B3SS = torch.from_numpy(clip_preprocess(frames_BHW3, self.size)).to(self.device, dtype)
        with torch.inference_mode():
            emb_BD = self.model(pixel_values=pix_B3SS).image_embeds.float()
            emb_BD = emb_BD / emb_BD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            score_B = self.head(emb_BD)
        return emb_BD.cpu().numpy(), score_B.cpu().numpy()


class AestheticFilter(RangeFilter):
    """Mean aesthetic score over ``num_frames`` frames per clip; keep >= min (4.5)."""

    name = "aesthetic"
    score_name = "aesthetic"
    config: AestheticConfig

    def __init__(self, config: AestheticConfig) -> None:
        super().__init__(config)
        if not config.clip_path or not config.head_path:
            raise ValueError("filters.aesthetic needs clip_path and head_path (local files)")
        self._scorer: AestheticScorer | None = None

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1, gpus=0.5 if self.config.device.startswith("cuda") else 0.0)

    def setup(self) -> None:
        if self._scorer is None:
            self._scorer = AestheticScorer.from_paths(
                self.config.clip_path, self.config.head_path, self.config.device
            )

    def teardown(self) -> None:
        self._scorer = None

    def score(self, clip: Clip) -> dict[str, float]:  # per-clip path (process() batches)
        self.process([clip])
        return {"aesthetic": clip.scores["aesthetic"]}

    def process(self, clips: list[Clip]) -> None:
        self.setup()
        todo = [c for c in clips if c.frames is not None and (c.kept or not self.short_circuit)]
        k = self.config.num_frames
        frames, owners = [], []
        for c in todo:
            for f in c.frames.get(c.frames.evenly(k)):
                frames.append(f)
                owners.append(c)
        if not frames:
            return
        bs = self.config.batch_size
        embs, scores = [], []
        for a in range(0, len(frames), bs):
            e, s = self._scorer.embed_and_score(np.stack(frames[a : a + bs]))
            embs.append(e)
            scores.append(s)
        emb_ND, score_N = np.concatenate(embs), np.concatenate(scores)
        for c in todo:
            rows = [i for i, o in enumerate(owners) if o is c]
            v = emb_ND[rows].mean(0)
            c.extra["clip_embedding"] = (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)
            c.scores["aesthetic"] = float(score_N[rows].mean())
            reason = self.verdict(c, {"aesthetic": c.scores["aesthetic"]})
            if reason is not None:
                c.reject(self.name, reason)
