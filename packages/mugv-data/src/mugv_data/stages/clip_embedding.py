"""CLIP image embeddings of clips from an open_clip model (local weights), for dedup.

The model is loaded with open-clip-torch from a local folder in the Hugging Face layout of
open_clip checkpoints (``open_clip_config.json`` + ``open_clip_model.safetensors``), or from a
built-in architecture name plus a local checkpoint file; nothing is downloaded. Frames go
through the model's own evaluation transform (open_clip's ``preprocess``). A clip's embedding
is the L2-normalised mean of its frames' normalised image embeddings, stored where dedup reads
CLIP embeddings (``clip_embedding``). The stage rejects nothing.
Shape legend: B images, D embedding size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mugv_data.config import ClipEmbeddingConfig
from mugv_data.stages.base import Clip, ClipStage, Resources


class OpenClipEmbedder:
    """An open_clip model's image tower and evaluation transform on one device."""

    def __init__(self, model, preprocess, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.preprocess = preprocess

    @classmethod
    def from_config(cls, c: ClipEmbeddingConfig) -> OpenClipEmbedder:
        import open_clip
        import torch

        device = c.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn("filters.clip_embedding.device=cuda but no GPU: on CPU", stacklevel=2)
            device = "cpu"
        if c.model_path:
            if not (Path(c.model_path) / "open_clip_config.json").is_file():
                raise ValueError(
                    f"filters.clip_embedding.model_path {c.model_path}: no open_clip_config.json "
                    "(a local open_clip model folder is expected)"
                )
            name, pretrained = f"local-dir:{Path(c.model_path).resolve()}", None
        else:
            if not c.weights or not Path(c.weights).is_file():
                raise ValueError(
                    f"filters.clip_embedding.weights {c.weights!r} is not a local file (needed "
                    f"with model={c.model!r}; nothing is downloaded)"
                )
            if c.model not in open_clip.list_models():
                raise ValueError(
                    f"filters.clip_embedding.model {c.model!r} is not an open_clip "
                    "architecture (open_clip.list_models())"
                )
            name, pretrained = c.model, str(c.weights)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            precision=c.precision,
            device=device,
            weights_only=True,
        )
        return cls(model, preprocess, device)

    def embed(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Unit-norm image embeddings of uint8 [H, W, 3] frames (any sizes), float32 [B, D]."""
        from PIL import Image

        torch = self.torch
        x = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames])
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            emb_BD = self.model.encode_image(x.to(self.device, dtype)).float()
        emb_BD = emb_BD / emb_BD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return emb_BD.cpu().numpy()


class ClipEmbeddingStage(ClipStage):
    """Records ``clip_embedding`` (open_clip) on every clip with frames; rejects nothing."""

    name = "clip_embedding"
    config: ClipEmbeddingConfig

    def __init__(self, config: ClipEmbeddingConfig) -> None:
        super().__init__(config)
        if not config.model_path and not config.weights:
            raise ValueError(
                "filters.clip_embedding needs model_path (a local open_clip folder) or "
                "model + weights (a local checkpoint)"
            )
        self._embedder: OpenClipEmbedder | None = None

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1, gpus=0.5 if self.config.device.startswith("cuda") else 0.0)

    def setup(self) -> None:
        if self._embedder is None:
            self._embedder = OpenClipEmbedder.from_config(self.config)

    def teardown(self) -> None:
        self._embedder = None

    def process(self, clips: list[Clip]) -> None:
        self.setup()
        todo = [c for c in clips if c.frames is not None and (c.kept or not self.short_circuit)]
        frames, owners = [], []
        for i, c in enumerate(todo):
            for f in c.frames.get(c.frames.evenly(self.config.num_frames)):
                frames.append(f)
                owners.append(i)
        if not frames:
            return
        bs = self.config.batch_size
        emb_ND = np.concatenate(
            [self._embedder.embed(frames[a : a + bs]) for a in range(0, len(frames), bs)]
        )
        owners_N = np.asarray(owners)
        for i, c in enumerate(todo):
            v = emb_ND[owners_N == i].astype(np.float64).mean(0)
            c.extra["clip_embedding"] = (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)
