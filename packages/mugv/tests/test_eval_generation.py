"""``mugv eval generation``: FVD plumbing with a tiny random feature extractor, the I3D network
(safetensors only, TF SAME padding), CLIP score with a tiny random open_clip model from a local
folder, the VBench wrapper against a fake ``vbench`` in a separate interpreter, and the errors
naming a missing weights path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mugv.cli import main
from mugv.evaluation.fvd import extract_features, fvd, prepare
from mugv.evaluation.generation import eval_generation
from mugv.evaluation.i3d import InceptionI3d, Unit3D
from mugv_formats.video import write_mp4


def _videos(folder: Path, n: int, frames: int, seed: int, shift: float = 0.0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = rng.uniform(40, 200, size=(1, 24, 32, 3)) + shift
        motion = np.linspace(0, 30, frames)[:, None, None, None]
        v = np.clip(base + motion, 0, 255).astype(np.uint8)
        write_mp4(v, folder / f"clip_{i}.mp4", 8.0, crf=10, preset="veryfast")
        out.append(v)
    return out


class TinyExtractor(torch.nn.Module):
    """A random Conv3d + mean pool: features of the right shape, nothing learned."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 6, 3, stride=2)

    @torch.no_grad()
    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3, 4))


def test_fvd_plumbing_pads_short_videos_and_separates_sets(tmp_path):
    gen = _videos(tmp_path / "gen", 3, 9, seed=0)
    ref = _videos(tmp_path / "ref", 4, 17, seed=1, shift=50)
    x, padded = prepare(gen[0], frames=16, size=32)
    assert x.shape == (3, 16, 32, 32) and padded
    assert torch.equal(x[:, 8], x[:, 15])  # the last frame repeated
    ext = TinyExtractor()
    same = fvd(gen, gen, ext, frames=16, size=32)
    other = fvd(gen, ref, ext, frames=16, size=32)
    assert abs(same["fvd"]) < 1e-6 and other["fvd"] > 1e-3
    assert (other["generated"], other["reference"], other["padded"]) == (3, 4, 3)
    feats, _ = extract_features(gen, ext, frames=16, size=32, batch_size=2)
    assert feats.shape == (3, 6) and feats.dtype == np.float64
    with pytest.raises(ValueError, match="at least 2 videos"):
        fvd(gen[:1], ref, ext)


def test_fvd_over_folders_and_a_clip_shard_set(tmp_path):
    _videos(tmp_path / "gen", 3, 9, seed=0)
    _videos(tmp_path / "ref", 3, 17, seed=1, shift=50)
    res = eval_generation(tmp_path / "gen", reference=tmp_path / "ref", fvd_extractor=TinyExtractor(),
                          device="cpu")  # fmt: skip
    assert res["videos"] == 3 and res["fvd"]["fvd"] > 0 and res["fvd"]["reference"] == 3


def test_i3d_same_padding_and_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    # TF SAME: output size is ceil(input / stride) whatever the kernel
    u = Unit3D(3, 4, (7, 7, 7), (2, 2, 2)).eval()
    assert u(torch.zeros(1, 3, 15, 13, 9)).shape[2:] == (8, 7, 5)
    torch.manual_seed(0)
    model = InceptionI3d()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = InceptionI3d.from_file(path)
    x = torch.rand(2, 3, 16, 32, 32) * 2 - 1
    for kind, dim in (("logits", 400), ("pool", 1024)):
        a, b = model.features(x, kind), loaded.features(x, kind)
        assert a.shape == (2, dim) and torch.equal(a, b)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("Mixed_5c.b0")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="missing.*Mixed_5c.b0"):
        InceptionI3d.from_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        InceptionI3d.from_file(tmp_path / "nowhere.safetensors")
    torch.save(model.state_dict(), tmp_path / "i3d.pt")
    with pytest.raises(ValueError, match="only .safetensors"):
        InceptionI3d.from_file(tmp_path / "i3d.pt")


def _tiny_clip_folder(folder: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))  # fmt: skip
    return folder


def test_clip_score_cli_with_a_tiny_local_model(tmp_path, capsys):
    pytest.importorskip("open_clip")
    from mugv.evaluation.clip_score import ClipScorer

    _videos(tmp_path / "gen", 2, 9, seed=0)
    clip_dir = _tiny_clip_folder(tmp_path / "clip")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"clip_0.mp4": "a red ball", "clip_1.mp4": "a blue sky"}))
    out = tmp_path / "out"
    rc = main(["eval", "generation", "--generated", str(tmp_path / "gen"), "--clip-weights",
               str(clip_dir), "--prompts", str(prompts), "--device", "cpu", "--output", str(out)])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "generation.json").read_text())
    rows = res["clip_score"]["videos"]
    assert [r["prompt"] for r in rows] == ["a red ball", "a blue sky"]
    # independent of the command: the same model's cosine, by hand, on the first frame only
    scorer = ClipScorer.from_local(clip_dir, device="cpu")
    from mugv.evaluation.videos import load_videos

    v = load_videos(tmp_path / "gen")[0]
    from PIL import Image

    with torch.no_grad():
        img = scorer.model.encode_image(scorer.preprocess(Image.fromarray(v.frames[0]))[None])
        txt = scorer.model.encode_text(scorer.tokenizer(["a red ball"]))
    cos = torch.nn.functional.cosine_similarity(img, txt).item()
    assert scorer.score(v.frames[:1], "a red ball", frames=1) == pytest.approx(100 * max(cos, 0))
    assert all(0 <= r["clip_score"] <= 100 for r in rows)
    assert "CLIP score" in (out / "generation.md").read_text()


def test_missing_weights_paths_are_one_line_errors_naming_them(tmp_path, capsys):
    _videos(tmp_path / "gen", 2, 9, seed=0)
    gen = str(tmp_path / "gen")
    cases = [
        (["--reference", gen, "--i3d-weights", str(tmp_path / "i3d.safetensors")], "i3d.safetensors"),
        (["--clip-weights", str(tmp_path / "clip.safetensors")], "clip.safetensors"),
        (["--vbench-models", str(tmp_path / "vbench-models")], "vbench-models"),
        (["--reference", gen], "--i3d-weights"),
        ([], "nothing to measure"),
    ]  # fmt: skip
    for extra, needle in cases:
        rc = main(["eval", "generation", "--generated", gen, "--output", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (extra, err)


FAKE_VBENCH = '''
import json, os
class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.device, self.output_path = device, output_path
    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False,
                 read_frame=False, mode="vbench_standard", **kwargs):
        videos = sorted(os.listdir(videos_path))
        seen = {"cache": os.environ.get("VBENCH_CACHE_DIR"), "local": local, "mode": mode,
                "prompts": prompt_list, "dimensions": dimension_list, "device": self.device}
        with open(os.path.join(self.output_path, "seen.json"), "w") as f:
            json.dump(seen, f)
        if "boom" in dimension_list:
            raise RuntimeError("fake vbench: unknown dimension boom")
        res = {d: [0.5 + i / 10, [{"video_path": v, "video_results": 0.5} for v in videos]]
               for i, d in enumerate(dimension_list)}
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
            json.dump(res, f)
'''


def test_vbench_wrapper_runs_a_fake_vbench_in_another_interpreter(tmp_path, capsys):
    fake = tmp_path / "fakeenv"
    (fake / "vbench").mkdir(parents=True)
    (fake / "vbench" / "__init__.py").write_text(FAKE_VBENCH)
    python = tmp_path / "vbench-python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{fake}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    _videos(tmp_path / "gen", 2, 9, seed=0)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"clip_0.mp4": "a cat", "clip_1.mp4": "a dog"}))
    out = tmp_path / "out"
    base = ["eval", "generation", "--generated", str(tmp_path / "gen"), "--vbench-models",
            str(models), "--vbench-python", str(python), "--prompts", str(prompts),
            "--device", "cpu", "--output", str(out)]  # fmt: skip
    rc = main([*base, "--vbench-dimensions", "subject_consistency", "imaging_quality"])
    assert rc == 0
    res = json.loads((out / "generation.json").read_text())["vbench"]
    assert res["dimensions"] == {"subject_consistency": 0.5, "imaging_quality": 0.6}
    assert len(res["per_video"]["imaging_quality"]) == 2
    seen = json.loads((out / "vbench" / "seen.json").read_text())
    assert seen["cache"] == str(models.resolve()) and seen["local"] is True
    assert seen["mode"] == "custom_input" and seen["device"] == "cpu"
    gen = (tmp_path / "gen").resolve()
    assert seen["prompts"] == {str(gen / "clip_0.mp4"): "a cat", str(gen / "clip_1.mp4"): "a dog"}
    with pytest.raises(RuntimeError, match="unknown dimension boom"):
        main([*base, "--vbench-dimensions", "boom"])
    rc = main([*base, "--vbench-dimensions", "i2v_subject"])
    assert rc == 2 and "VBench-I2V" in capsys.readouterr().err
