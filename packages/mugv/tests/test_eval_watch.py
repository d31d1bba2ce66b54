"""``mugv eval watch``: a run's sample exports rendered to mp4 and TensorBoard GIFs, the
same frames as mugv-infer's pipeline called directly with the stored prompt and seed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

STEPS = (2, 4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with two sample exports (random tiny DiTs as the trainer lays them out),
    a tiny random VAE and the tiny-random T5 folder."""
    import torch
    from mugv.tools import text_encoder_folder
    from mugv_dit import write_random_export
    from mugv_dit.config import SamplesConfig, model_preset
    from mugv_dit.interop.export import load_export, save_export
    from mugv_vae.config import tiny_config
    from mugv_vae.model import MUGVAE

    root = tmp_path_factory.mktemp("watch")
    text_encoder_folder("tiny-random", root / "t5")
    torch.manual_seed(0)
    MUGVAE(tiny_config()).eval().save_pretrained(root / "vae")
    settings = SamplesConfig(
        every_steps=2, prompts=["a red car", "waves"], seeds=[0, 7], height=32, width=48,
        num_frames=9, inference_steps=2, guidance_scale=1.0, fps=8.0,
    ).model_dump(mode="json")  # fmt: skip
    cfg = model_preset("debug")  # text_dim 32 (tiny-random T5), 24 latent channels
    for step in STEPS:
        _, state = load_export(write_random_export(cfg, root / f"rand{step}", seed=step))
        save_export(root / "run" / "samples" / "exports" / f"step_{step:07d}", cfg, state,
                    {"step": step, "weights": "ema", "samples": settings})  # fmt: skip
    return root


def _decode_mp4(path):
    import av

    with av.open(str(path)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])


def test_watch_renders_each_export_once(run):
    import torch
    from mugv.evaluation.watch import watch
    from mugv_infer import MUGVPipeline
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    kw = {"vae": run / "vae", "text_encoder": run / "t5", "device": "cpu"}
    done = watch(run / "run", once=True, **kw)
    assert [d["step"] for d in done] == list(STEPS)
    assert watch(run / "run", once=True, **kw) == []  # rendered: nothing pending
    videos = run / "run" / "samples" / "videos"
    index = json.loads((videos / "step_0000004" / "index.json").read_text())
    assert [(v["prompt"], v["seed"], v["file"]) for v in index["videos"]] == [
        ("a red car", 0, "p0_s0.mp4"), ("a red car", 7, "p0_s7.mp4"),
        ("waves", 0, "p1_s0.mp4"), ("waves", 7, "p1_s7.mp4"),
    ]  # fmt: skip
    # the mp4 holds what the pipeline makes of that prompt and seed (H.264 crf 18 aside)
    pipe = MUGVPipeline.from_parts(run / "run" / "samples" / "exports" / "step_0000004",
                                   run / "vae", run / "t5")  # fmt: skip
    pipe.set_progress_bar_config(disable=True)

    def direct(prompt, seed):
        res = pipe(prompt=[prompt], height=32, width=48, num_frames=9, num_inference_steps=2,
                   guidance_scale=1.0, generator=torch.Generator().manual_seed(seed), fps=8.0)  # fmt: skip
        return np.round(res.frames[0] * 255).astype(np.uint8)

    got = _decode_mp4(videos / "step_0000004" / "p1_s7.mp4").astype(float)
    want, other = direct("waves", 7).astype(float), direct("waves", 0).astype(float)
    assert got.shape == want.shape == (9, 32, 48, 3)
    # a random tiny DiT renders pixel noise, H.264's worst case (4:2:0 chroma): 12.3 / 255
    # mean error measured against 31.3 to the other seed's frames
    err, err_other = np.abs(got - want).mean(), np.abs(got - other).mean()
    assert err < 16 and err < 0.5 * err_other, (err, err_other)
    # TensorBoard: one animated GIF per (prompt, seed) per step
    acc = EventAccumulator(str(run / "run" / "tensorboard" / "samples")).Reload()
    assert sorted(acc.Tags()["images"]) == [f"samples/p{i}_s{s}" for i in (0, 1) for s in (0, 7)]
    events = acc.Images("samples/p1_s7")
    assert [e.step for e in events] == list(STEPS)
    gif = Image.open(io.BytesIO(events[-1].encoded_image_string))
    assert gif.n_frames == 9 and gif.size == (48, 32)


def test_watch_cli_names_a_missing_folder(run, tmp_path, capsys):
    from mugv import cli

    rc = cli.main(["eval", "watch", str(run / "run"), "--vae", str(tmp_path / "nope"),
                   "--text-encoder", str(run / "t5"), "--once"])  # fmt: skip
    assert rc == 2
    assert f"--vae {tmp_path / 'nope'} is not a folder" in capsys.readouterr().err
