"""The release preset (mugv_infer.release): I2V decode against a float64 reference written
from the release's rule, posterior samples per seed, the negative-prompt default, the bf16
schedule numerics, the crop rounding, and ``mugv-infer generate --preset release``."""

from __future__ import annotations

import copy
import math

import av
import numpy as np
import pytest
import torch
from mugv_infer_fixtures import FRAMES, HEIGHT, WIDTH


def _bf16(x: float) -> float:
    """Round a float to the nearest bfloat16 (ties to even), independently of torch."""
    m, e = math.frexp(x)  # x = m 2^e, 0.5 <= |m| < 1: 8 significant bits kept
    return round(m * 256) / 256 * 2.0**e


def _image(seed=0):
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- I2V decode
def _reference_release_decode(vae, latents_BCKHW, image_3HW):
    """The release's rule, float64: frame 0 is the image; latents 1.. are de-normalised
    (z * std + mean), cut into windows of 6 (the last shorter), each window's temporal
    decode gives 8 frames per latent, all kept, each frame through the spatial trunk."""
    vae = copy.deepcopy(vae).double()
    mean = vae.latent_mean.double().view(1, -1, 1, 1, 1)
    std = vae.latent_std.double().view(1, -1, 1, 1, 1)
    z = latents_BCKHW.double()[:, :, 1:] * std + mean
    frames = [image_3HW.double()[None, :, None].expand(z.shape[0], -1, -1, -1, -1)]
    k = z.shape[2]
    for start in range(0, k, 6):
        feats = vae.temporal_decoder(z[:, :, start : min(k, start + 6)])
        assert feats.shape[2] == 8 * (min(k, start + 6) - start)
        for f in range(feats.shape[2]):  # frame by frame, as written (batch 1 per frame)
            frames.append(vae.trunk.decode(feats[:, :, f])[:, :, None])
    return torch.cat(frames, dim=2).clamp(-1, 1)


def test_release_i2v_decode_matches_the_rule(pipe):
    from mugv_infer.release import apply_preset

    k = 8  # latents 1..7: windows [1..6] and [7]
    latents = torch.randn(1, 24, k, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(1))
    image = _image()
    default = pipe.output_frames(latents, "pt", paste=image[:, None], image=image)
    apply_preset(pipe, "release")
    ours = pipe.output_frames(latents, "pt", image=image).permute(0, 2, 1, 3, 4)  # B 3 F H W
    with torch.no_grad():
        ref = _reference_release_decode(pipe.vae.to_mugv_vae(), latents, image)
    assert ours.shape == ref.shape == (1, 3, 1 + 8 * (k - 1), HEIGHT, WIDTH)
    torch.testing.assert_close(ours.double(), (ref + 1) / 2, rtol=0, atol=2e-5)
    torch.testing.assert_close(ours[:, :, 0], (image[None] + 1) / 2)  # the image itself
    # mugv's decode (windows of 8 from latent 0) gives other frames 1..
    assert (default.permute(0, 2, 1, 3, 4)[:, :, 1:] - ours[:, :, 1:]).abs().amax() > 1e-3


def test_release_i2v_decode_tiled_equals_whole_within_blend(pipe):
    """VAE tiling keeps the release's frame layout (same count, the image first)."""
    from mugv_infer.release import apply_preset

    apply_preset(pipe, "release")
    latents = torch.randn(1, 24, 3, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(2))
    pipe.enable_vae_tiling(4, 1)  # one tile: the same computation
    tiled = pipe.output_frames(latents, "pt", image=_image())
    pipe.disable_vae_tiling()
    whole = pipe.output_frames(latents, "pt", image=_image())
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- conditioning latent
def test_posterior_sample_reproducible_per_seed(pipe):
    from mugv_infer.release import apply_preset

    image = _image(3)
    args = (image, None, None, HEIGHT, WIDTH, FRAMES, 1)

    def cond(seed):
        clean, _, _ = pipe.prepare_conditioning(*args, torch.Generator().manual_seed(seed))
        return clean[:, :, 0]

    mean = cond(0)
    with torch.no_grad():
        torch.testing.assert_close(mean, pipe.vae.to_mugv_vae().encode(image[None, :, None])[:, :, 0])
    apply_preset(pipe, "release")
    a, b, other = cond(7), cond(7), cond(8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - other).abs().amax() > 1e-3 and (a - mean).abs().amax() > 1e-3
    # independent: mean + std * eps, eps the seed's first standard-normal draw on the CPU
    with torch.no_grad():
        post = pipe.vae.to_mugv_vae().encode_posterior(image[None, :, None])
    eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(7))
    want = (post.mean.double() + post.std.double() * eps.double())[:, :, 0]
    m = pipe.vae.latent_mean.double().view(1, -1, 1, 1)
    s = pipe.vae.latent_std.double().view(1, -1, 1, 1)
    torch.testing.assert_close(a.double(), (want - m) / s, rtol=1e-5, atol=1e-5)


def test_posterior_sample_follows_the_pipeline_seed(pipe, call_kwargs):
    """Through ``__call__``: the release preset's video is a function of the seed."""
    from mugv_infer.release import apply_preset

    apply_preset(pipe, "release")
    kw = {**call_kwargs, "output_type": "latent", "num_inference_steps": 1}
    run = [pipe("a cat", image=_image(), generator=torch.Generator().manual_seed(s), **kw).frames for s in (5, 5, 6)]
    torch.testing.assert_close(run[0], run[1], rtol=0, atol=0)
    assert (run[0][:, :, 0] - run[2][:, :, 0]).abs().amax() > 1e-3


# ---------------------------------------------------------------- negative prompt
def test_negative_prompt_default_is_the_release_prompt(pipe, parts):
    from mugv_infer import DEFAULT_NEGATIVE_PROMPT, MUGVPipeline
    from mugv_infer.release import NULL_CAPTION, apply_preset
    from mugv_infer.text import encode_prompts

    _, _, neg, _ = pipe.encode_prompt("a cat", None, True)
    want, _ = encode_prompts(pipe.tokenizer, pipe.text_encoder, [DEFAULT_NEGATIVE_PROMPT], "cpu")
    torch.testing.assert_close(neg, want)
    _, _, null, _ = pipe.encode_prompt("a cat", NULL_CAPTION, True)
    torch.testing.assert_close(null[0], pipe.transformer.y_embedder.null_caption.detach().float())
    # without a text encoder the default cannot be encoded: mugv warns, the release refuses
    bare = MUGVPipeline.from_parts(parts["model"], parts["vae"])
    embeds = torch.randn(1, 5, 32)
    with pytest.warns(UserWarning, match="null caption"):
        _, _, null2, _ = bare.encode_prompt(None, None, True, prompt_embeds=embeds)
    torch.testing.assert_close(null2, null)
    apply_preset(bare, "release")
    with pytest.raises(ValueError, match="negative prompt"):
        bare.encode_prompt(None, None, True, prompt_embeds=embeds)


# ---------------------------------------------------------------- numerics
def test_release_shift_ratio_is_the_bf16_one():
    from mugv_infer.scheduler import release_shift_ratio, release_timesteps, shift_ratio

    assert float(release_shift_ratio(1280, 720, 14)) == 7.0
    assert shift_ratio(1280, 720, 14) == pytest.approx(7.015607600201)
    for h, w, t in ((1280, 720, 14), (832, 1104, 14), (960, 960, 10), (32, 48, 2)):
        r = _bf16(_bf16(math.sqrt(_bf16(_bf16(h) * _bf16(w)) / 512**2)) * _bf16(math.sqrt(t)))
        assert float(release_shift_ratio(h, w, t)) == r
        got = release_timesteps(25, h, w, t).double()
        s = 1 - torch.arange(25, dtype=torch.float64) / 25
        want = 1000 * r * s / (1 + _bf16(r - 1) * s)
        torch.testing.assert_close(got, want, rtol=4e-7, atol=1e-6)  # float32 arithmetic


def test_release_numerics_change_exactly_the_ratio_and_the_timestep_rounding(pipe, call_kwargs):
    """Same call with numerics exact / release: the DiT's timestep inputs are 1000 shift(s, r)
    with the float64 r, or bf16(1000 shift(s, r_bf16)) (with r - 1 in bf16, as the release:
    at this tiny size its first level is 984, not 1000); the t=0 branch, the text features and
    the first latents the DiT sees are identical; the Euler steps are the levels' differences."""
    from mugv_infer.release import InferenceChoices, apply_preset

    seen = {}

    def record(name):
        def hook(module, args):
            seen.setdefault(name, []).append(args[0].detach().clone())

        return hook

    h1 = pipe.transformer.t_embedder.register_forward_pre_hook(record("t"))
    h2 = pipe.transformer.y_embedder.register_forward_pre_hook(record("text"))
    kw = {**call_kwargs, "output_type": "latent", "num_inference_steps": 3}
    runs = {}
    for numerics in ("exact", "release"):
        seen.clear()
        apply_preset(pipe, InferenceChoices(numerics=numerics))
        pipe("a cat", generator=torch.Generator().manual_seed(0), **kw)
        runs[numerics] = {k: list(v) for k, v in seen.items()}
        runs[numerics]["steps"] = list(pipe.scheduler.step_sizes)
    h1.remove()
    h2.remove()
    t_lat = 1 + (FRAMES - 1) // 8
    r_exact = math.sqrt(HEIGHT * WIDTH / 512**2) * math.sqrt(t_lat)
    r_bf16 = _bf16(_bf16(math.sqrt(HEIGHT * WIDTH / 512**2)) * _bf16(math.sqrt(t_lat)))
    assert r_bf16 != r_exact
    s = 1 - torch.arange(3, dtype=torch.float64) / 3
    for numerics, r, r1 in (("exact", r_exact, r_exact - 1), ("release", r_bf16, _bf16(r_bf16 - 1))):
        t_calls = runs[numerics]["t"]  # per DiT call: [t (B), then zeros (B)] in the batch
        levels = 1000 * r * s / (1 + r1 * s)  # the release: r - 1 is a bf16 tensor too
        got = torch.stack([c.double().reshape(-1)[0] for c in t_calls[0::2]])
        zeros = torch.stack([c.reshape(-1) for c in t_calls[1::2]])
        assert bool((zeros == 0).all())
        if numerics == "release":
            want = torch.tensor([_bf16(float(v)) for v in levels], dtype=torch.float64)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        else:
            torch.testing.assert_close(got, levels, rtol=1e-6, atol=1e-4)
        steps = torch.tensor(runs[numerics]["steps"], dtype=torch.float64)
        torch.testing.assert_close(steps, torch.cat([levels[:-1] - levels[1:], levels[-1:]]) / 1000, rtol=0, atol=1e-6)
    for a, b in zip(runs["exact"]["text"], runs["release"]["text"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_release_numerics_load_t5_in_float32(parts):
    from mugv_infer import MUGVPipeline
    from mugv_infer.release import apply_preset

    pipe = MUGVPipeline.from_parts(
        parts["model"], parts["vae"], parts["t5"], torch_dtype=torch.bfloat16,
        text_encoder_dtype=torch.float32,
    )  # fmt: skip
    assert pipe.text_encoder.dtype == torch.float32 and pipe.transformer.dtype == torch.bfloat16
    apply_preset(pipe, "release")
    assert pipe.transformer.timestep_round_dtype == torch.bfloat16
    assert pipe.scheduler.config.numerics == "release"
    low = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"], torch_dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="float32"):
        apply_preset(low, "release")
    assert low.text_encoder.dtype == torch.float32


# ---------------------------------------------------------------- crop, config, CLI
def test_crop_offset_rounds_half_to_even_as_the_release():
    from mugv_infer.video_io import crop_offset, load_image
    from PIL import Image

    assert [crop_offset(e, "floor") for e in (5, 6, 7)] == [2, 3, 3]
    assert [crop_offset(e, "round") for e in (5, 6, 7)] == [2, 3, 4]  # round(2.5)=2, round(3.5)=4
    arr = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH + 7, 3), dtype=np.uint8)
    for rounding, left in (("floor", 3), ("round", 4)):
        got = load_image(Image.fromarray(arr), HEIGHT, WIDTH, rounding)
        want = torch.from_numpy(arr[:, left : left + WIDTH].astype(np.float32) / 127.5 - 1)
        torch.testing.assert_close(got, want.permute(2, 0, 1))


def test_preset_fills_choices_and_fps_unless_given():
    from mugv_infer.config import GenerateConfig
    from mugv_infer.release import PRESETS

    base = {"model": "m", "vae": "v", "prompt": ["a"]}
    mugv = GenerateConfig.model_validate(base)
    assert mugv.choices == PRESETS["mugv"] and mugv.output_fps == 21
    rel = GenerateConfig.model_validate({**base, "preset": "release"})
    assert rel.choices == PRESETS["release"] and rel.output_fps == 20
    mixed = GenerateConfig.model_validate(
        {**base, "preset": "release", "output_fps": 24, "choices": {"numerics": "exact"}}
    )
    assert mixed.output_fps == 24 and mixed.choices.numerics == "exact"
    assert mixed.choices.i2v_decode == "release"
    again = GenerateConfig.model_validate(mixed.model_dump(mode="json"))  # resolved file
    assert again == mixed


def test_cli_generate_preset_release_i2v(parts, tmp_path):
    from mugv_infer.cli import main
    from PIL import Image

    img = tmp_path / "first.png"
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 200, np.uint8)).save(img)
    out = tmp_path / "v.mp4"
    argv = [
        "generate", "--preset", "release",
        "--model", str(parts["model"]), "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]), "--prompt", "a cat", "--image", str(img),
        "--resolution", f"{HEIGHT}x{WIDTH}", "--frames", "9", "--steps", "1", "--out", str(out),
        "--set", "runtime.dtype=float32", "--set", "runtime.device=cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert float(stream.average_rate) == 20.0
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9
    assert abs(float(frames[0].mean()) - 200) < 3  # frame 0 is the image itself
