"""Random-weight model folders for the model stages, for tests and benchmarks (no downloads).

:func:`write_aesthetic_models` writes a Hugging Face ``CLIPVisionModelWithProjection`` folder
and a LAION aesthetic head (``filters.aesthetic.clip_path`` / ``head_path``) of one of
:data:`CLIP_SIZES`: ``tiny`` (2 layers of width 32 on 32x32 images: tests on CPU) or ``l14``
(the shape of CLIP ViT-L/14 at 224, as the LAION head expects: timing on a GPU). The scores
of random weights mean nothing; the work per clip is that of the real model.
"""

from __future__ import annotations

from pathlib import Path

#: CLIPVisionConfig fields per size
CLIP_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    ),
    "l14": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
    ),
}


def write_aesthetic_models(root: str | Path, size: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """``(clip folder, head file)`` under ``root`` with seeded random weights."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from mugv_data.stages.aesthetic import build_head

    if size not in CLIP_SIZES:
        raise ValueError(f"size {size!r} is not one of {sorted(CLIP_SIZES)}")
    dims = CLIP_SIZES[size]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**dims)).eval()
    model.save_pretrained(root / "clip")
    torch.save(build_head(dims["projection_dim"]).eval().state_dict(), root / "head.pth")
    return root / "clip", root / "head.pth"
