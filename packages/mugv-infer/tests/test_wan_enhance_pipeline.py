"""The release enhancer's other parts and its pipeline (mugv_infer.wan_enhancer): Wan's umT5
file against a float64 encoder written from Wan's definition, Wan's VAE file (every key
placed), and ``WanEnhancePipeline.from_release`` on a tiny folder laid out like the release,
its one SDEdit step against the recipe computed with diffusers' own forward."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from wan_release_fixtures import (
    T5_BUCKETS,
    T5_DIM,
    T5_HEADS,
    T5_LAYERS,
    release_dit_state,
    release_lora_state,
    wan_t5_state,
    wan_vae_state,
)

HEAD_DIM = 16
Z = 16  # the Wan VAE's latent channels


# ---------------------------------------------------------------- umT5
def _wan_t5_reference(s, ids, mask):
    """Wan's ``T5Encoder`` (umT5), float64, from its definition: per-block bidirectional
    relative position bias (buckets of ``k - q``: half per sign, exact below a quarter of the
    buckets, log-spaced up to distance 128), RMS norms, unscaled attention with padded keys
    masked, ``fc2(fc1(x) * gelu_tanh(gate(x)))``."""

    def rms(x, w):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def bucket(rel):
        half = T5_BUCKETS // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        large = (
            exact
            + (
                torch.log(rel.double().clamp(min=1) / exact)
                / math.log(128 / exact)
                * (half - exact)
            ).long()
        )
        return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))

    b, n = ids.shape
    hd = T5_DIM // T5_HEADS
    x = s["token_embedding.weight"][ids]
    pos = torch.arange(n)
    rel = bucket(pos[None, :] - pos[:, None])  # [q, k]
    key_mask = (1.0 - mask[:, None, None, :].double()) * torch.finfo(torch.float64).min
    for i in range(T5_LAYERS):
        p = f"blocks.{i}."
        h = rms(x, s[p + "norm1.weight"])
        q, k, v = ((h @ s[f"{p}attn.{n_}.weight"].T).view(b, n, T5_HEADS, hd) for n_ in "qkv")
        bias = s[p + "pos_embedding.embedding.weight"][rel].permute(2, 0, 1)[None]
        a = torch.einsum("bqhc,bkhc->bhqk", q, k) + bias + key_mask
        x = (
            x
            + torch.einsum("bhqk,bkhc->bqhc", a.softmax(-1), v).reshape(b, n, -1)
            @ s[f"{p}attn.o.weight"].T
        )
        h = rms(x, s[p + "norm2.weight"])
        g = h @ s[p + "ffn.gate.0.weight"].T
        g = 0.5 * g * (1 + torch.tanh((2 / math.pi) ** 0.5 * (g + 0.044715 * g**3)))
        x = x + ((h @ s[p + "ffn.fc1.weight"].T) * g) @ s[p + "ffn.fc2.weight"].T
    return rms(x, s["norm.weight"])


def test_wan_t5_file_equals_wan_encoder_float64():
    from mugv_infer.wan_enhancer.convert import load_wan_t5

    state = wan_t5_state()
    model = load_wan_t5(state)
    ids = torch.tensor([[5, 9, 3, 60, 1, 0, 0, 0, 0, 0, 0, 0], [7, 1] + [0] * 10])
    ids[0, 5:] = torch.arange(11, 18)  # a long text: distances past the exact buckets
    ids[0, -1] = 1
    mask = torch.ones_like(ids)
    mask[1, 2:] = 0
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).last_hidden_state
    ref = _wan_t5_reference(state, ids, mask)
    assert ours.dtype == torch.float64
    # both T5 norms take the mean square in float32 (Wan's and transformers'), hence 1e-5
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1, :2], ref[1, :2], rtol=1e-5, atol=1e-5)  # real tokens
    assert ref.abs().amax() > 0.5


def test_wan_t5_and_vae_keys_all_placed():
    from mugv_infer.wan_enhancer.convert import load_wan_t5, load_wan_vae

    t5 = wan_t5_state()
    with pytest.raises(ValueError, match=r"fit no umT5 encoder tensor.*blocks\.0\.attn\.extra"):
        load_wan_t5({**t5, "blocks.0.attn.extra.weight": torch.zeros(1)})
    del t5["blocks.1.ffn.fc1.weight"]
    with pytest.raises(
        ValueError, match=r"missing.*encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1"
    ):
        load_wan_t5(t5)
    vae_state = wan_vae_state()
    vae = load_wan_vae(vae_state)
    assert sum(p.numel() for p in vae.parameters()) == sum(v.numel() for v in vae_state.values())
    with pytest.raises(ValueError, match=r"fit no AutoencoderKLWan tensor"):
        load_wan_vae({**vae_state, "decoder.extra.weight": torch.zeros(1)})


# ---------------------------------------------------------------- the pipeline
@pytest.fixture(scope="module")
def release_dirs(tmp_path_factory, parts):
    """``enhancer/`` and ``Wan2.1-T2V-1.3B/`` laid out like the release, tiny and random."""
    root = tmp_path_factory.mktemp("release")
    enhancer, wan = root / "enhancer", root / "Wan2.1-T2V-1.3B"
    enhancer.mkdir()
    (wan / "google").mkdir(parents=True)
    dit = release_dit_state(dtype=torch.float32, latent=Z, text_dim=T5_DIM)
    save_file(dit, str(enhancer / "dit_i2v.safetensors"))
    lora = release_lora_state(with_base=False)
    torch.save({k: v * 0.1 for k, v in lora.items()}, enhancer / "pytorch_model.bin")
    torch.save(
        {k: v.float() for k, v in wan_t5_state().items()}, wan / "models_t5_umt5-xxl-enc-bf16.pth"
    )
    torch.save(wan_vae_state(), wan / "Wan2.1_VAE.pth")
    shutil.copytree(parts["t5"], wan / "google" / "umt5-xxl")  # a tiny sentencepiece tokenizer
    return enhancer, wan


@pytest.fixture(scope="module")
def wan_pipe(release_dirs):
    from mugv_infer.wan_enhancer.pipeline import WanEnhancePipeline

    pipe = WanEnhancePipeline.from_release(
        *release_dirs, torch_dtype=torch.float32, attention_head_dim=HEAD_DIM, fuse_lora=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _video(seed=0, frames=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, 32, 32, generator=g) * 2 - 1


def _reference(pipe, video, seed, prompt, negative, s=0.3, g=2.0):
    """The recipe with diffusers' own parts: posterior mean normalised, noise to s with the
    first latent clean, diffusers' per-token timestep forward (frame 0 at t = 0) on
    [noisy, clean], CFG, x - s v, the first latent clean, decode."""
    vae, dit = pipe.vae, pipe.transformer
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    x0 = (vae.encode(video).latent_dist.mean - mean) / std
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x = (1 - s) * x0 + s * eps
    x[:, :, 0] = x0[:, :, 0]
    t, h, w = x0.shape[2:]
    per_token = torch.full((1, t * (h // 2) * (w // 2)), 1000 * s)
    per_token[:, : (h // 2) * (w // 2)] = 0.0

    def text(p):
        tok = pipe.tokenizer(
            p, padding="max_length", max_length=512, truncation=True, return_tensors="pt"
        )
        feats = pipe.text_encoder(
            tok.input_ids, attention_mask=tok.attention_mask
        ).last_hidden_state
        return feats * tok.attention_mask[..., None]

    def v(p):
        return dit(torch.cat([x, x0], 1), per_token, text(p), return_dict=False)[0]

    vp, vn = v(prompt), v(negative)
    x = x - s * (vn + g * (vp - vn))
    x[:, :, 0] = x0[:, :, 0]
    return x, vae.decode(x * std + mean).sample.clamp(-1, 1)


def test_enhancer_one_step_matches_the_recipe_with_diffusers_forward(wan_pipe):
    video = _video()
    kw = dict(prompt="a cat walks", negative_prompt="the quick brown fox jumps over the lazy dog")
    with torch.no_grad():
        ref_latents, ref = _reference(wan_pipe, video, 7, kw["prompt"], kw["negative_prompt"])
    lat = wan_pipe(
        video, generator=torch.Generator().manual_seed(7), output_type="latent", **kw
    ).frames
    out = wan_pipe(video, generator=torch.Generator().manual_seed(7), **kw).frames
    assert lat.shape == (1, Z, 2, 4, 4) and out.shape == video.shape
    torch.testing.assert_close(lat, ref_latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # the first latent frame is the clean one, exactly
    with torch.no_grad():
        clean = wan_pipe.encode_video(video, torch.device("cpu"))
    torch.testing.assert_close(lat[:, :, :1], clean[:, :, :1], rtol=0, atol=0)
    # guidance 1 (no negative branch) and another seed differ
    one = wan_pipe(
        video,
        generator=torch.Generator().manual_seed(7),
        guidance_scale=1.0,
        output_type="latent",
        **kw,
    )
    other = wan_pipe(video, generator=torch.Generator().manual_seed(8), output_type="latent", **kw)
    assert (one.frames - lat).abs().amax() > 1e-4 and (other.frames - lat).abs().amax() > 1e-4


def test_enhancer_release_defaults_and_bad_inputs(wan_pipe, release_dirs):
    from mugv_infer.wan_enhancer.pipeline import (
        RELEASE_ENHANCE_PROMPT,
        RELEASE_NEGATIVE_PROMPT,
        WanEnhancePipeline,
    )
    from mugv_infer.wan_enhancer.settings import locate_release

    assert RELEASE_ENHANCE_PROMPT.endswith(
        "high quality,cinema"
    ) and RELEASE_NEGATIVE_PROMPT.endswith("倒着走")
    import inspect

    sig = inspect.signature(WanEnhancePipeline.__call__).parameters
    assert sig["strength"].default == 0.3 and sig["guidance_scale"].default == 2.0
    assert sig["prompt"].default == RELEASE_ENHANCE_PROMPT
    with pytest.raises(ValueError, match="strength"):
        wan_pipe(_video(), strength=0.0)
    with pytest.raises(ValueError, match="multiples of 16"):
        wan_pipe(_video()[..., :24])
    enhancer, wan = release_dirs
    # the release's pretrained_ckpt layout from its root; the Wan folder found beside
    assert locate_release(enhancer.parent) == locate_release(enhancer, wan)
    assert locate_release(enhancer.parent)["lora"] == enhancer / "pytorch_model.bin"
    with pytest.raises(ValueError, match=r"--enhance-wan .*no models_t5_umt5-xxl-enc-bf16\.pth"):
        locate_release(enhancer, wan.parent / "nowhere")
    with pytest.raises(ValueError, match=r"--enhance .*no dit_i2v\.safetensors"):
        locate_release(wan)


# ---------------------------------------------------------------- mugv-infer generate --enhance
def _read_mp4(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_generate_enhance_chains_the_release_enhancer(parts, release_dirs, tmp_path, capsys):
    import yaml
    from mugv_infer.cli import main

    enhancer, wan = release_dirs
    base = [
        "generate", "--model", str(parts["model"]), "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]), "--prompt", "a cat walks", "--resolution", "32x48",
        "--frames", "9", "--steps", "2", "--seed", "3",
        "--set", "runtime.dtype=float32", "--set", "runtime.device=cpu",
    ]  # fmt: skip
    plain, enhanced = tmp_path / "plain.mp4", tmp_path / "enhanced.mp4"
    assert main([*base, "--out", str(plain)]) == 0
    # the release's pretrained_ckpt root: enhancer/ and Wan2.1-T2V-1.3B/ found inside
    extra = ["--enhance", str(enhancer.parent), "--set", "enhance.attention_head_dim=16"]
    assert main([*base, "--out", str(enhanced), *extra]) == 0
    a, b = _read_mp4(plain), _read_mp4(enhanced)
    assert a.shape == b.shape == (9, 32, 48, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 2
    resolved = yaml.safe_load((tmp_path / "enhanced.resolved.yaml").read_text())
    assert resolved["enhance"]["path"] == str(enhancer.parent)
    assert resolved["enhance"]["strength"] == 0.3 and resolved["enhance"]["guidance_scale"] == 2.0
    # user errors before any model loads: one line, exit 2
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x.mp4"), "--enhance", str(wan)]) == 2
    assert "no dit_i2v.safetensors" in capsys.readouterr().err
    lat = [*base, "--out", str(tmp_path / "lat"), "--output-type", "latent", *extra]
    assert main(lat) == 2 and "--output-type video" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_wan_enhance_tiny_cpu(tmp_path):
    """The GPU benchmark's CPU smoke run: every row timed, framewise = diffusers per-token."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_wan_enhance.py"
    spec = importlib.util.spec_from_file_location("bench_wan_enhance", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "w.json"
    assert bench.main(["--tiny", "--device", "cpu", "--repeats", "1", "--out", str(out)]) == 0
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dit framewise", "dit diffusers per-token", "vae encode", "vae decode",
                         "enhance (DiT x2 + VAE)"}  # fmt: skip
    assert rows["dit diffusers per-token"]["rel_l2_vs_framewise"] < 1e-4
    assert (tmp_path / "w.md").read_text().startswith("# release enhancer")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_enhancer_bf16_cuda_close_to_float32_cpu(release_dirs):
    """The release runs the enhancer in bf16: on CUDA its latents stay close to float32 CPU."""
    from mugv_infer.wan_enhancer.pipeline import WanEnhancePipeline

    def run(dtype, device):
        pipe = WanEnhancePipeline.from_release(
            *release_dirs, torch_dtype=dtype, attention_head_dim=HEAD_DIM
        )
        pipe.to(device)
        out = pipe(_video(), generator=torch.Generator().manual_seed(0), output_type="latent")
        return out.frames.float().cpu()

    ref, ours = run(torch.float32, "cpu"), run(torch.bfloat16, "cuda")
    rel = ((ours - ref).norm() / ref.norm()).item()
    assert rel < 3e-2, rel
