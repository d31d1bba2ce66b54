"""The released enhancer files -> diffusers / transformers models (local paths only).

The release's enhancer folder holds ``dit_i2v.safetensors`` (the DiT in Wan's original
names, with ``patch_embedding2``) and ``pytorch_model.bin`` (the LoRA and any retrained base
weights, saved from the training module: ``pipe.dit.<Wan name>``, peft's
``.lora_A.default.weight`` / ``.lora_B.default.weight``); the Wan2.1-T2V-1.3B folder holds
``models_t5_umt5-xxl-enc-bf16.pth`` (umT5-XXL encoder, Wan's names), ``Wan2.1_VAE.pth`` and the
tokenizer ``google/umt5-xxl/``. Each converter maps every key of the release's names and
refuses a file with a key it cannot place (none is silently dropped) or a model key the file
does not fill. ``.pth`` / ``.bin`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mugv_infer.wan_enhancer.settings import (
    RELEASE_DIT_FILE,
    RELEASE_HEAD_DIM,
    RELEASE_LORA_ALPHA,
    RELEASE_LORA_FILE,
    WAN_T5_FILE,
    WAN_VAE_FILE,
)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth`` / ``.bin`` state dict read with
    ``weights_only=True`` (no pickled code). ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any unreadable file is one user error
        raise ValueError(f"{path}: not a readable state dict ({err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict (a {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:3]}")
    return state


def _refuse_leftovers(source: str, what: str, unmapped, missing=()) -> None:
    unmapped, missing = sorted(unmapped), sorted(missing)
    if unmapped:
        raise ValueError(
            f"{source}: {len(unmapped)} key(s) that fit no {what} tensor: {unmapped[:5]}"
        )
    if missing:
        raise ValueError(f"{source}: {len(missing)} {what} tensor(s) missing: {missing[:5]}")


# ------------------------------------------------------------------------------- the DiT
def release_dit_config(
    state: dict[str, torch.Tensor], attention_head_dim: int = RELEASE_HEAD_DIM
) -> dict:
    """``WanTransformer3DModel`` config of a release-named DiT state (after folding: the
    patch embedding takes twice the latent channels)."""
    try:
        pe = state["patch_embedding.weight"]
        inner, channels, *patch = pe.shape
        out = state["head.head.weight"].shape[0] // (patch[0] * patch[1] * patch[2])
        text_dim = state["text_embedding.0.weight"].shape[1]
        freq_dim = state["time_embedding.0.weight"].shape[1]
        ffn_dim = state["blocks.0.ffn.0.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not a Wan DiT state dict: no {err.args[0]}") from err
    if inner % attention_head_dim:
        raise ValueError(
            f"model width {inner} is not a multiple of the head width {attention_head_dim}"
        )
    if any(k.startswith("img_emb.") for k in state):
        raise ValueError(
            "a Wan I2V DiT (with a CLIP image embedding) is not the release's enhancer"
        )
    layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    extra = "patch_embedding2.weight" in state
    return {
        "patch_size": tuple(patch),
        "num_attention_heads": inner // attention_head_dim,
        "attention_head_dim": attention_head_dim,
        "in_channels": channels * (2 if extra else 1),
        "out_channels": out,
        "text_dim": text_dim,
        "freq_dim": freq_dim,
        "ffn_dim": ffn_dim,
        "num_layers": len(layers),
        "cross_attn_norm": "blocks.0.norm3.weight" in state,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in state else None,
        "eps": 1e-6,
    }


def release_dit_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Release (Wan original) names -> ``WanTransformer3DModel`` names, the two patch
    embeddings folded into one over 32 channels (:func:`..transformer.fold_patch_embeddings`).
    The renames are diffusers' own (``convert_wan_transformer_to_diffusers``)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from mugv_infer.wan_enhancer.transformer import fold_patch_embeddings

    state = dict(state)
    second = [state.pop(f"patch_embedding2.{n}", None) for n in ("weight", "bias")]
    converted = convert_wan_transformer_to_diffusers(state)
    if any(t is not None for t in second):
        if any(t is None for t in second):
            raise ValueError(
                "patch_embedding2 has a weight without a bias or a bias without a weight"
            )
        converted["patch_embedding.weight"], converted["patch_embedding.bias"] = (
            fold_patch_embeddings(
                converted["patch_embedding.weight"], converted["patch_embedding.bias"], *second
            )
        )
    return converted


def load_release_dit(
    state: dict[str, torch.Tensor],
    *,
    source: str = "the DiT",
    attention_head_dim: int = RELEASE_HEAD_DIM,
    dtype: torch.dtype | None = None,
):
    """A ``WanTransformer3DModel`` holding a release-named DiT state (every key placed, every
    model tensor filled; ValueError naming ``source`` otherwise). Built on the meta device
    and filled by assignment (no random initialisation of 1.3B weights)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    config = release_dit_config(state, attention_head_dim)
    converted = release_dit_to_diffusers(state)
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
    expected = set(model.state_dict())
    _refuse_leftovers(
        source, "WanTransformer3DModel", set(converted) - expected, expected - set(converted)
    )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [
        f"{k} {tuple(v.shape)} (model {shapes[k]})"
        for k, v in converted.items()
        if tuple(v.shape) != shapes[k]
    ]
    if wrong:
        raise ValueError(f"{source}: tensors of the wrong shape: {wrong[:5]}")
    model.load_state_dict(converted, strict=True, assign=True)
    # non-persistent RoPE tables: rebuilt off the meta device
    model.rope = WanRotaryPosEmbed(
        attention_head_dim, config["patch_size"], model.config.rope_max_seq_len
    )
    return model.eval()


# ------------------------------------------------------------------------------- the LoRA
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")


def split_release_lora(
    state: dict[str, torch.Tensor], source: str = "the LoRA file"
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """The release's ``pytorch_model.bin`` -> (``{Wan module: {"A": .., "B": ..}}``,
    ``{Wan DiT key: tensor}`` of retrained base weights). Keys are the training module's
    (``pipe.dit.<name>``; the release loads them after dropping ``pipe.``), peft's
    ``<module>.lora_A.default.weight`` or a base tensor (``<module>.base_layer.weight`` is the
    base ``<module>.weight``). A key outside the DiT, a LoRA half without its other half, or
    two adapters are refused."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    base: dict[str, torch.Tensor] = {}
    adapters = set()
    for key, value in state.items():
        name = key.removeprefix("pipe.")
        if not name.startswith("dit."):
            raise ValueError(
                f"{source}: key {key!r} is not the DiT's (pipe.dit.*); the release's LoRA "
                "file adapts only the DiT"
            )
        name = name.removeprefix("dit.")
        m = _LORA_KEY.match(name)
        if m:
            adapters.add(m["adapter"])
            lora.setdefault(m["module"], {})[m["ab"]] = value
        else:
            base[name.replace(".base_layer.", ".")] = value
    if len(adapters) > 1:
        raise ValueError(f"{source}: several adapters {sorted(map(str, adapters))}; one expected")
    halves = [
        f"{m} (lora_{'B' if 'A' in ab else 'A'} missing)" for m, ab in lora.items() if len(ab) != 2
    ]
    if halves:
        raise ValueError(f"{source}: LoRA halves without their pair: {halves[:5]}")
    return lora, base


def _diffusers_name(wan_key: str) -> str:
    """One Wan DiT key -> its ``WanTransformer3DModel`` name (diffusers' renames)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    (name,) = convert_wan_transformer_to_diffusers({wan_key: None})
    return name


def load_release_lora(
    transformer,
    lora: dict[str, dict[str, torch.Tensor]],
    *,
    alpha: float = RELEASE_LORA_ALPHA,
    fuse: bool = False,
    source: str = "the LoRA file",
):
    """Inject the release's LoRA (from :func:`split_release_lora`) into a
    ``WanTransformer3DModel`` through peft: one adapter of rank ``r`` (read from the tensors)
    on exactly the modules the file names, update ``(alpha / r) B A`` (the release: alpha 4,
    r 256). ``fuse`` merges it into the base weights. Returns ``transformer``."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    if not lora:
        return transformer
    ranks = {pair["A"].shape[0] for pair in lora.values()}
    if len(ranks) != 1:
        raise ValueError(f"{source}: LoRA ranks differ between layers: {sorted(ranks)}")
    modules = {_diffusers_name(f"{m}.weight").removesuffix(".weight"): m for m in lora}
    names = dict(transformer.named_modules())
    unknown = [
        f"{wan} (-> {ours})"
        for ours, wan in modules.items()
        if not isinstance(names.get(ours), torch.nn.Linear)
    ]
    _refuse_leftovers(source, "linear layer of the DiT", unknown)
    state = {}
    for ours, wan in modules.items():
        layer = names[ours]
        a, b = lora[wan]["A"], lora[wan]["B"]
        if (
            a.shape[1] != layer.in_features
            or b.shape[0] != layer.out_features
            or b.shape[1] != a.shape[0]
        ):
            raise ValueError(
                f"{source}: LoRA of {wan}: A {tuple(a.shape)}, B {tuple(b.shape)} do not fit "
                f"a {layer.in_features} -> {layer.out_features} layer"
            )
        dtype = layer.weight.dtype
        state[f"{ours}.lora_A.weight"], state[f"{ours}.lora_B.weight"] = a.to(dtype), b.to(dtype)
    config = LoraConfig(r=ranks.pop(), lora_alpha=float(alpha), target_modules=sorted(modules))
    inject_adapter_in_model(config, transformer)
    result = set_peft_model_state_dict(transformer, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    _refuse_leftovers(source, "LoRA layer", unexpected)
    if fuse:
        from peft.tuners.lora import LoraLayer

        for module in transformer.modules():
            if isinstance(module, LoraLayer):
                module.merge()
    return transformer


def load_release_enhancer_dit(
    dit_state: dict[str, torch.Tensor],
    lora_state: dict[str, torch.Tensor] | None = None,
    *,
    lora_alpha: float = RELEASE_LORA_ALPHA,
    fuse_lora: bool = False,
    attention_head_dim: int = RELEASE_HEAD_DIM,
    dtype: torch.dtype | None = None,
    sources: tuple[str, str] = (RELEASE_DIT_FILE, RELEASE_LORA_FILE),
):
    """The release's enhancer DiT: ``dit_state`` with the LoRA file's retrained base tensors
    put over it (each must name a DiT tensor of the same shape), loaded by
    :func:`load_release_dit`, then the LoRA through peft (:func:`load_release_lora`)."""
    lora, base = split_release_lora(lora_state or {}, sources[1])
    unknown = [k for k in base if k not in dit_state]
    _refuse_leftovers(sources[1], "DiT", unknown)
    wrong = [
        f"{k} {tuple(v.shape)} (DiT {tuple(dit_state[k].shape)})"
        for k, v in base.items()
        if v.shape != dit_state[k].shape
    ]
    if wrong:
        raise ValueError(f"{sources[1]}: tensors of the wrong shape: {wrong[:5]}")
    merged = {**dit_state, **{k: v.to(dit_state[k].dtype) for k, v in base.items()}}
    model = load_release_dit(
        merged, source=sources[0], attention_head_dim=attention_head_dim, dtype=dtype
    )
    return load_release_lora(model, lora, alpha=lora_alpha, fuse=fuse_lora, source=sources[1])


# ------------------------------------------------------------------------------- umT5
_T5_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU-tanh gate
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
"""Wan's umT5 encoder block (``T5SelfAttention``, per-block relative position embedding) ->
transformers' ``UMT5Block`` (``fc1(x) * gelu_tanh(gate(x))`` = ``wi_1(x) * gelu_new(wi_0(x))``)."""


def wan_t5_to_umt5(state: dict[str, torch.Tensor], source: str = WAN_T5_FILE):
    """Wan's umT5 encoder state (``models_t5_umt5-xxl-enc-bf16.pth``) -> (``UMT5Config``,
    ``UMT5EncoderModel`` state). Every key placed or ValueError naming it."""
    from transformers import UMT5Config

    out, unmapped = {}, []
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.match(r"^blocks\.(\d+)\.(.+)$", key)) and m[2] in _T5_BLOCK:
            out[f"encoder.block.{m[1]}.{_T5_BLOCK[m[2]]}"] = value
        else:
            unmapped.append(key)
    _refuse_leftovers(source, "umT5 encoder", unmapped)
    try:
        vocab, d_model = state["token_embedding.weight"].shape
        buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
        d_attn = state["blocks.0.attn.q.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"{source}: not Wan's umT5 encoder: no {err.args[0]}") from err
    layers = len({int(m[1]) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    config = UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=d_attn // heads,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
        dropout_rate=0.0,
    )
    return config, out


def load_wan_t5(state: dict[str, torch.Tensor], *, source: str = WAN_T5_FILE, dtype=None):
    """A ``UMT5EncoderModel`` holding Wan's umT5 encoder weights (strict: none missing)."""
    from transformers import UMT5EncoderModel

    config, converted = wan_t5_to_umt5(state, source)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    expected = set(model.state_dict())
    _refuse_leftovers(source, "umT5 encoder", set(converted) - expected, expected - set(converted))
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    model.tie_weights()
    return model.eval()


# ------------------------------------------------------------------------------- the Wan VAE
def load_wan_vae(state: dict[str, torch.Tensor], *, source: str = WAN_VAE_FILE, dtype=None):
    """An ``AutoencoderKLWan`` holding the original Wan2.1 VAE weights (``Wan2.1_VAE.pth``;
    diffusers' ``convert_wan_vae_to_diffusers`` renames; base width and latent channels read
    from the tensors, the rest Wan2.1's layout). Every key placed, none missing."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    try:
        base_dim = state["encoder.conv1.weight"].shape[0]
        z_dim = state["conv2.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"{source}: not a Wan VAE: no {err.args[0]}") from err
    converted = convert_wan_vae_to_diffusers(dict(state))
    with torch.device("meta"):
        model = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim)
    expected = set(model.state_dict())
    _refuse_leftovers(
        source, "AutoencoderKLWan", set(converted) - expected, expected - set(converted)
    )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [k for k, v in converted.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        raise ValueError(f"{source}: tensors of the wrong shape for a Wan2.1 VAE: {wrong[:5]}")
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()
