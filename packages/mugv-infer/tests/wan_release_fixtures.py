"""Tiny random state dicts laid out like the MUG-V release's enhancer files, their key names
written from the release's module structure (Wan's original ``WanModel`` with a second patch
embedding; peft's LoRA names under the training module's ``pipe.dit.`` prefix; Wan's T5
encoder), independently of the converters they test."""

from __future__ import annotations

import torch

DIM, HEADS, FFN, LAYERS = 32, 2, 48, 2  # head width 16
LATENT, TEXT_DIM, FREQ = 4, 24, 16
LORA_RANK = 8


def release_dit_state(seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """``dit_i2v.safetensors`` at tiny size: every tensor of the release's ``WanModel``
    (t2v, qk-norm, cross-attention norm) plus ``patch_embedding2``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    s = {}
    for name in ("patch_embedding", "patch_embedding2"):
        s[f"{name}.weight"], s[f"{name}.bias"] = r(DIM, LATENT, 1, 2, 2), r(DIM)
    for i, (o, n) in enumerate([(DIM, TEXT_DIM), (DIM, DIM)]):
        s[f"text_embedding.{2 * i}.weight"], s[f"text_embedding.{2 * i}.bias"] = r(o, n), r(o)
    for i, (o, n) in enumerate([(DIM, FREQ), (DIM, DIM)]):
        s[f"time_embedding.{2 * i}.weight"], s[f"time_embedding.{2 * i}.bias"] = r(o, n), r(o)
    s["time_projection.1.weight"], s["time_projection.1.bias"] = r(6 * DIM, DIM), r(6 * DIM)
    for b in range(LAYERS):
        p = f"blocks.{b}."
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                s[f"{p}{attn}.{lin}.weight"], s[f"{p}{attn}.{lin}.bias"] = r(DIM, DIM), r(DIM)
            s[f"{p}{attn}.norm_q.weight"] = 1 + r(DIM)
            s[f"{p}{attn}.norm_k.weight"] = 1 + r(DIM)
        s[f"{p}norm3.weight"], s[f"{p}norm3.bias"] = 1 + r(DIM), r(DIM)
        s[f"{p}ffn.0.weight"], s[f"{p}ffn.0.bias"] = r(FFN, DIM), r(FFN)
        s[f"{p}ffn.2.weight"], s[f"{p}ffn.2.bias"] = r(DIM, FFN), r(DIM)
        s[f"{p}modulation"] = r(1, 6, DIM)
    s["head.head.weight"], s["head.head.bias"] = r(LATENT * 4, DIM), r(LATENT * 4)
    s["head.modulation"] = r(1, 2, DIM)
    return s


LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")  # fmt: skip


def release_lora_state(
    seed: int = 1, dtype=torch.float32, with_base: bool = True
) -> dict[str, torch.Tensor]:
    """``pytorch_model.bin`` at tiny size: the training module's trainable tensors,
    ``pipe.dit.blocks.N.<target>.lora_{A,B}.default.weight`` for q, k, v, o of both
    attentions and ffn.0 / ffn.2, plus (``with_base``) the retrained patch embeddings."""
    g = torch.Generator().manual_seed(seed)
    s = {}
    shapes = {"ffn.0": (FFN, DIM), "ffn.2": (DIM, FFN)}
    for b in range(LAYERS):
        for t in LORA_TARGETS:
            out, inp = shapes.get(t, (DIM, DIM))
            key = f"pipe.dit.blocks.{b}.{t}"
            s[f"{key}.lora_A.default.weight"] = torch.randn(LORA_RANK, inp, generator=g).to(dtype)
            s[f"{key}.lora_B.default.weight"] = torch.randn(out, LORA_RANK, generator=g).to(dtype)
    if with_base:
        for name in ("patch_embedding", "patch_embedding2"):
            s[f"pipe.dit.{name}.weight"] = torch.randn(DIM, LATENT, 1, 2, 2, generator=g).to(dtype)
            s[f"pipe.dit.{name}.bias"] = torch.randn(DIM, generator=g).to(dtype)
    return s
