"""Tiny random state dicts laid out like the MUG-V release's enhancer files, their key names
written from the release's module structure (Wan's original ``WanModel`` with a second patch
embedding; peft's LoRA names under the training module's ``pipe.dit.`` prefix; Wan's T5
encoder), independently of the converters they test."""

from __future__ import annotations

import itertools

import torch

DIM, HEADS, FFN, LAYERS = 32, 2, 48, 2  # head width 16
LATENT, TEXT_DIM, FREQ = 4, 24, 16
LORA_RANK = 8


def release_dit_state(
    seed: int = 0, dtype=torch.float64, latent: int = LATENT, text_dim: int = TEXT_DIM
) -> dict[str, torch.Tensor]:
    """``dit_i2v.safetensors`` at tiny size: every tensor of the release's ``WanModel``
    (t2v, qk-norm, cross-attention norm) plus ``patch_embedding2``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    s = {}
    for name in ("patch_embedding", "patch_embedding2"):
        s[f"{name}.weight"], s[f"{name}.bias"] = r(DIM, latent, 1, 2, 2), r(DIM)
    for i, (o, n) in enumerate([(DIM, text_dim), (DIM, DIM)]):
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
    s["head.head.weight"], s["head.head.bias"] = r(latent * 4, DIM), r(latent * 4)
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


T5_VOCAB, T5_DIM, T5_HEADS, T5_FF, T5_LAYERS, T5_BUCKETS = 64, 16, 4, 24, 2, 8


def wan_t5_state(seed: int = 2, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """``models_t5_umt5-xxl-enc-bf16.pth`` at tiny size: Wan's ``T5Encoder`` (umT5: a relative
    position embedding in every block, gated-GELU FFN ``fc2(fc1(x) * gelu(gate.0(x)))``)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    s = {"token_embedding.weight": r(T5_VOCAB, T5_DIM, scale=1.0), "norm.weight": 1 + r(T5_DIM)}
    for b in range(T5_LAYERS):
        p = f"blocks.{b}."
        s[p + "norm1.weight"], s[p + "norm2.weight"] = 1 + r(T5_DIM), 1 + r(T5_DIM)
        for lin in "qkvo":
            s[f"{p}attn.{lin}.weight"] = r(T5_DIM, T5_DIM)
        s[p + "ffn.gate.0.weight"], s[p + "ffn.fc1.weight"] = r(T5_FF, T5_DIM), r(T5_FF, T5_DIM)
        s[p + "ffn.fc2.weight"] = r(T5_DIM, T5_FF)
        s[p + "pos_embedding.embedding.weight"] = r(T5_BUCKETS, T5_HEADS)
    return s


def wan_vae_state(dim: int = 4, z_dim: int = 16, seed: int = 3) -> dict[str, torch.Tensor]:
    """``Wan2.1_VAE.pth`` at tiny width: Wan's ``WanVAE_`` (``Encoder3d`` / ``Decoder3d`` with
    dim_mult (1, 2, 4, 4), 2 residual blocks, no attention scales, temporal down-sampling in
    stages 2 and 3; ``conv1`` / ``conv2`` around the latent)."""
    g = torch.Generator().manual_seed(seed)
    s: dict[str, torch.Tensor] = {}

    def put(name, *shape):
        s[name] = torch.randn(*shape, generator=g) * 0.1

    def conv(name, o, i, *k):
        put(f"{name}.weight", o, i, *k)
        put(f"{name}.bias", o)

    def res(p, i, o):
        put(f"{p}.residual.0.gamma", i, 1, 1, 1)
        conv(f"{p}.residual.2", o, i, 3, 3, 3)
        put(f"{p}.residual.3.gamma", o, 1, 1, 1)
        conv(f"{p}.residual.6", o, o, 3, 3, 3)
        if i != o:
            conv(f"{p}.shortcut", o, i, 1, 1, 1)

    def middle(p, c):
        res(f"{p}.0", c, c)
        put(f"{p}.1.norm.gamma", c, 1, 1)
        conv(f"{p}.1.to_qkv", 3 * c, c, 1, 1)
        conv(f"{p}.1.proj", c, c, 1, 1)
        res(f"{p}.2", c, c)

    dims = [dim * u for u in (1, 1, 2, 4, 4)]
    conv("encoder.conv1", dims[0], 3, 3, 3, 3)
    n = 0
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        for _ in range(2):
            res(f"encoder.downsamples.{n}", a, b)
            a, n = b, n + 1
        if i != 3:
            conv(f"encoder.downsamples.{n}.resample.1", b, b, 3, 3)
            if i in (1, 2):  # temperal_downsample (False, True, True)
                conv(f"encoder.downsamples.{n}.time_conv", b, b, 3, 1, 1)
            n += 1
    middle("encoder.middle", dims[-1])
    put("encoder.head.0.gamma", dims[-1], 1, 1, 1)
    conv("encoder.head.2", 2 * z_dim, dims[-1], 3, 3, 3)
    conv("conv1", 2 * z_dim, 2 * z_dim, 1, 1, 1)
    conv("conv2", z_dim, z_dim, 1, 1, 1)
    dims = [dim * u for u in (4, 4, 4, 2, 1)]
    conv("decoder.conv1", dims[0], z_dim, 3, 3, 3)
    middle("decoder.middle", dims[0])
    n = 0
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        a = a // 2 if i in (1, 2, 3) else a
        for _ in range(3):
            res(f"decoder.upsamples.{n}", a, b)
            a, n = b, n + 1
        if i != 3:
            conv(f"decoder.upsamples.{n}.resample.1", b // 2, b, 3, 3)
            if i in (0, 1):  # temperal_upsample (True, True, False)
                conv(f"decoder.upsamples.{n}.time_conv", 2 * b, b, 3, 1, 1)
            n += 1
    put("decoder.head.0.gamma", dims[-1], 1, 1, 1)
    conv("decoder.head.2", 3, dims[-1], 3, 3, 3)
    return s
