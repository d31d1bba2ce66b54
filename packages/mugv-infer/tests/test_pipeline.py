"""MUGVPipeline on tiny random components on CPU: T2V / I2V / TI2V / first-last / continuation,
CFG, batching, seeds, output types, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mugv_infer_fixtures import FRAMES, HEIGHT, WIDTH


def test_t2v_np_output_shape_and_range(pipe, call_kwargs):
    out = pipe("a cat walks", generator=torch.Generator().manual_seed(0), **call_kwargs)
    assert out.frames.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    assert out.frames.dtype == np.float32
    assert out.frames.min() >= 0.0 and out.frames.max() <= 1.0


def test_same_seed_same_video_other_seed_differs(pipe, call_kwargs):
    kw = {**call_kwargs, "output_type": "latent"}
    a = pipe("a cat", generator=torch.Generator().manual_seed(1), **kw).frames
    b = pipe("a cat", generator=torch.Generator().manual_seed(1), **kw).frames
    c = pipe("a cat", generator=torch.Generator().manual_seed(2), **kw).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().amax() > 1e-3


def _latents(pipe, batch=1, seed=0):
    shape = pipe.latent_shape(batch, HEIGHT, WIDTH, FRAMES)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _image(seed=0):
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_i2v_holds_the_image_latent_clean_in_slot_0(pipe, call_kwargs):
    image = _image()
    kw = {**call_kwargs, "output_type": "latent"}
    out = pipe("a cat", image=image, latents=_latents(pipe), **kw).frames
    expected = pipe.vae.to_mugv_vae().encode(image[None, :, None])
    torch.testing.assert_close(out[:, :, :1], expected, rtol=1e-5, atol=1e-5)
    t2v = pipe("a cat", latents=_latents(pipe), **kw).frames
    assert (out[:, :, 1:] - t2v[:, :, 1:]).abs().amax() > 1e-4  # the condition steers frame 1
    # decoded output: frame 0 is the given image itself
    video = pipe("a cat", image=image, latents=_latents(pipe), **call_kwargs).frames
    np.testing.assert_allclose(
        video[0, 0], ((image.permute(1, 2, 0) + 1) / 2).numpy(), rtol=0, atol=1e-6
    )


def test_image_from_file_and_ti2v(pipe, call_kwargs, tmp_path):
    from PIL import Image

    arr = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    out = pipe("a red car", image=tmp_path / "in.png", **call_kwargs)
    assert out.frames.shape == (1, FRAMES, HEIGHT, WIDTH, 3)


def test_first_last_frame_and_continuation(pipe, call_kwargs):
    kw = {**call_kwargs, "output_type": "latent"}
    first, last = _image(1), _image(2)
    out = pipe("a fox", image=first, last_image=last, latents=_latents(pipe), **kw).frames
    torch.testing.assert_close(
        out[:, :, -1:], pipe.vae.to_mugv_vae().encode(last[None, :, None]), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        out[:, :, :1], pipe.vae.to_mugv_vae().encode(first[None, :, None]), rtol=1e-5, atol=1e-5
    )
    # continuation: a 9-frame clip fills latents 0..1 of a 17-frame video
    clip = torch.rand(3, 9, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3)) * 2 - 1
    lat = torch.randn(pipe.latent_shape(1, HEIGHT, WIDTH, 17))
    out = pipe("a fox", video=clip, latents=lat, **{**kw, "num_frames": 17}).frames
    torch.testing.assert_close(out[:, :, :2], pipe.vae.to_mugv_vae().encode(clip[None]), rtol=1e-5, atol=1e-5)


def test_cfg_negative_prompt_null_caption_and_no_guidance_differ(pipe, call_kwargs):
    from mugv_infer.release import NULL_CAPTION

    kw = {**call_kwargs, "output_type": "latent"}
    null = pipe("a cat", negative_prompt=NULL_CAPTION, latents=_latents(pipe), **kw).frames
    neg = pipe("a cat", negative_prompt="blurry", latents=_latents(pipe), **kw).frames
    plain = pipe("a cat", latents=_latents(pipe), **{**kw, "guidance_scale": 1.0}).frames
    rescaled = pipe("a cat", latents=_latents(pipe), guidance_rescale=0.7, **kw).frames
    for other in (neg, plain, rescaled):
        assert (null - other).abs().amax() > 1e-5


def test_batch_matches_single_prompts(pipe, call_kwargs):
    """Two prompts of different lengths (padded + masked in one batch) x 2 videos each give
    what each prompt gives alone from the same noise."""
    kw = {**call_kwargs, "output_type": "latent"}
    prompts = ["a cat", "the quick brown fox jumps over the lazy dog"]
    lat = _latents(pipe, batch=4)
    both = pipe(prompts, negative_prompt="blurry", num_videos_per_prompt=2, latents=lat, **kw)
    assert both.frames.shape[0] == 4
    for i, p in enumerate(prompts):
        for j in range(2):
            k = 2 * i + j
            alone = pipe(p, negative_prompt="blurry", latents=lat[k : k + 1], **kw).frames
            torch.testing.assert_close(both.frames[k : k + 1], alone, rtol=1e-5, atol=1e-5)


def test_output_types(pipe, call_kwargs):
    from PIL import Image

    pil = pipe(
        "a cat", output_type="pil", **{k: v for k, v in call_kwargs.items() if k != "output_type"}
    )
    assert len(pil.frames) == 1 and len(pil.frames[0]) == FRAMES
    assert isinstance(pil.frames[0][0], Image.Image) and pil.frames[0][0].size == (WIDTH, HEIGHT)
    pt = pipe("a cat", **{**call_kwargs, "output_type": "pt"}).frames
    assert pt.shape == (1, FRAMES, 3, HEIGHT, WIDTH) and isinstance(pt, torch.Tensor)
    lat = pipe("a cat", **{**call_kwargs, "output_type": "latent"}).frames
    assert lat.shape == (1, 24, 2, HEIGHT // 8, WIDTH // 8)
    tup = pipe("a cat", return_dict=False, **call_kwargs)
    assert isinstance(tup, tuple) and tup[0].shape == (1, FRAMES, HEIGHT, WIDTH, 3)


def test_prompt_embeds_without_text_encoder(parts, call_kwargs):
    from mugv_infer import MUGVPipeline

    pipe = MUGVPipeline.from_parts(parts["model"], parts["vae"])  # no T5
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.randn(1, 7, 32)
    out = pipe(prompt_embeds=embeds, **call_kwargs)
    assert out.frames.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    with pytest.raises(ValueError, match="text encoder"):
        pipe("a cat", **call_kwargs)


def test_callback_on_step_end_sees_every_step(pipe, call_kwargs):
    seen = []

    def cb(p, i, t, kw):
        seen.append((i, float(t), kw["latents"].shape))
        return {"latents": kw["latents"]}

    pipe("a cat", callback_on_step_end=cb, **call_kwargs)
    assert [i for i, _, _ in seen] == [0, 1]
    assert seen[0][1] == pytest.approx(1.0) and seen[1][1] < 1.0


def test_frame_index_default_is_arange(pipe, call_kwargs):
    kw = {**call_kwargs, "output_type": "latent"}
    a = pipe("a cat", latents=_latents(pipe), **kw).frames
    b = pipe("a cat", latents=_latents(pipe), frame_index=torch.arange(4)[None], **kw).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_save_pretrained_round_trip(pipe, call_kwargs, tmp_path):
    from mugv_infer import MUGVPipeline

    kw = {**call_kwargs, "output_type": "latent"}
    pipe.save_pretrained(tmp_path / "saved")
    loaded = MUGVPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    a = pipe("a cat", latents=_latents(pipe), **kw).frames
    b = loaded("a cat", latents=_latents(pipe), **kw).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bfloat16_pipeline_runs_close_to_float32(parts, call_kwargs):
    from mugv_infer import MUGVPipeline

    kw = {**call_kwargs, "output_type": "latent"}
    p32 = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    p16 = MUGVPipeline.from_parts(
        parts["model"], parts["vae"], parts["t5"], torch_dtype=torch.bfloat16
    )
    for p in (p32, p16):
        p.set_progress_bar_config(disable=True)
    a = p32("a cat", latents=_latents(p32), **kw).frames
    b = p16("a cat", latents=_latents(p32), **kw).frames
    assert p16.transformer.dtype == torch.bfloat16
    assert b.dtype == torch.float32
    assert ((a - b).norm() / a.norm()) < 0.05


def test_cpu_offload_gives_the_same_result(pipe, call_kwargs):
    kw = {**call_kwargs, "output_type": "latent"}
    a = pipe("a cat", latents=_latents(pipe), **kw).frames
    pipe.enable_model_cpu_offload(device="cpu")
    pipe.enable_vae_tiling(2, 1)
    b = pipe("a cat", latents=_latents(pipe), **kw).frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    video = pipe("a cat", latents=_latents(pipe), **call_kwargs).frames
    assert video.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
