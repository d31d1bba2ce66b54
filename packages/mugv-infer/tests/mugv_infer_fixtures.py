"""Tiny random components (diffusers' pipeline-test style): a 2-layer, 2-head MUG-DiT, the
tiny mugv VAE and a tiny random T5 with a character-level sentencepiece tokenizer, all saved
to a session tmp folder. Nothing is downloaded."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")

TEXT_DIM = 32
HEIGHT = WIDTH = 32  # pixels: 4x4 latents, 2x2 tokens per frame
FRAMES = 9  # 2 latent frames


def tiny_transformer(seed: int = 0):
    from mugv_infer.models import MUGDiTTransformer3DModel

    model = MUGDiTTransformer3DModel(
        hidden_size=24, num_layers=2, num_heads=2, in_channels=24, text_dim=TEXT_DIM
    )
    return model.initialize_weights(seed).eval()


def tiny_parts(root: Path) -> dict[str, Path]:
    """Folders under ``root``: ``model`` (mugv.dit-export), ``vae`` (mugv.vae-checkpoint),
    ``t5`` (a local T5 folder with its tokenizer)."""
    from mugv_vae.config import tiny_config
    from mugv_vae.model import MUGVAE

    tiny_transformer().save_export(root / "model")
    torch.manual_seed(0)
    MUGVAE(tiny_config()).eval().save_pretrained(root / "vae")
    return {"model": root / "model", "vae": root / "vae", "t5": tiny_t5(root / "text")}


def tiny_t5(path: Path) -> Path:
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path.mkdir(parents=True, exist_ok=True)
    corpus = path / "corpus.txt"
    corpus.write_text(
        "\n".join(
            [
                "a cat walks on the grass",
                "a red car drives fast at night",
                "the quick brown fox jumps over the lazy dog",
                "waves crash on a sunny beach, aesthetic score: 6.0.",
            ]
            * 10
        )
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(path / "sp"),
        vocab_size=40,
        model_type="char",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    out = path / "t5"
    T5Tokenizer(vocab_file=str(path / "sp.model"), extra_ids=0, legacy=False).save_pretrained(out)
    torch.manual_seed(0)
    config = T5Config(vocab_size=48, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5EncoderModel(config).eval().save_pretrained(out)
    return out
