"""open_clip clip embeddings (filters.clip_embedding) with a tiny random open_clip model saved
in the local-folder layout, checked against a float64 computation written from the CLIP
preprocessing spec, and used by dedup."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mugv_data.config import ClipEmbeddingConfig, load_config
from mugv_data.stages.base import Clip, ClipFrames

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """(folder with open_clip_config.json + open_clip_model.safetensors, the float64 model)."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY)
    with torch.no_grad():  # a random model whose outputs differ between images
        for p in model.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "open_clip_model.safetensors"))
    cfg = {"model_cfg": TINY, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    return d, model.double().eval()


def reference_embedding(model64, frames) -> np.ndarray:
    """CLIP eval transform from its spec (bicubic resize of the short side to 32, centre crop,
    [0, 1], normalise), float64 image tower, unit norm, mean over frames, unit norm."""
    from PIL import Image

    xs = []
    for f in frames:
        h, w = f.shape[:2]
        s = 32 / min(h, w)
        nh, nw = round(h * s), round(w * s)
        r = np.asarray(Image.fromarray(f).resize((nw, nh), Image.BICUBIC), np.float64) / 255
        t, left = round((nh - 32) / 2.0), round((nw - 32) / 2.0)  # CenterCrop
        r = (r[t : t + 32, left : left + 32] - OPENAI_MEAN) / OPENAI_STD
        xs.append(r.transpose(2, 0, 1))
    with torch.no_grad():
        e = model64.encode_image(torch.from_numpy(np.stack(xs))).numpy()
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    v = e.mean(0)
    return v / np.linalg.norm(v)


def clip_of(frames) -> Clip:
    arr = np.stack(frames)
    c = Clip("k", "s", 0, 0, len(arr), 0.0, 1.0, 25.0)
    c.frames = ClipFrames(len(arr), 25.0, lambda idx: arr[list(idx)])
    return c


def test_open_clip_embedding_matches_float64_reference(tiny_open_clip):
    from mugv_data.stages.clip_embedding import ClipEmbeddingStage

    folder, model64 = tiny_open_clip
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(6)]
    other = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    stage = ClipEmbeddingStage(
        ClipEmbeddingConfig(enabled=True, model_path=str(folder), num_frames=3, batch_size=2)
    )
    a, b = clip_of(frames), clip_of(other)
    stage.process([a, b])
    for c, src in ((a, frames), (b, other)):
        idx = c.frames.evenly(3)
        assert len(set(idx)) == 3
        fr = [src[i] for i in idx]
        got = c.extra["clip_embedding"]
        assert got.dtype == np.float32 and got.shape == (16,)
        np.testing.assert_allclose(got, reference_embedding(model64, fr), atol=2e-5)
        assert c.kept and not c.scores  # records an embedding, rejects nothing
    assert float(a.extra["clip_embedding"] @ b.extra["clip_embedding"]) < 0.999
    # the same weights through an architecture name + a checkpoint file give the same vector
    open_clip.add_model_config(_config_file(folder))
    by_name = ClipEmbeddingStage(
        ClipEmbeddingConfig(
            model="tiny_test_clip", weights=str(folder / "open_clip_model.safetensors"), num_frames=3
        )
    )
    a2 = clip_of(frames)
    by_name.process([a2])
    np.testing.assert_array_equal(a2.extra["clip_embedding"], a.extra["clip_embedding"])


def _config_file(folder):
    p = folder.parent / "tiny_test_clip.json"
    p.write_text(json.dumps(TINY))
    return p


def test_open_clip_errors_name_the_setting(tmp_path):
    from mugv_data.stages.clip_embedding import ClipEmbeddingStage

    with pytest.raises(ValueError, match="needs model_path .* or model \\+ weights"):
        ClipEmbeddingStage(ClipEmbeddingConfig(enabled=True))
    with pytest.raises(ValueError, match="model_path .*: no open_clip_config.json"):
        ClipEmbeddingStage(ClipEmbeddingConfig(model_path=str(tmp_path))).setup()
    with pytest.raises(ValueError, match="weights .* is not a local file"):
        ClipEmbeddingStage(ClipEmbeddingConfig(weights=str(tmp_path / "x.pt"))).setup()
    with pytest.raises(Exception, match=r"clip_embedding.weights cannot differ per source"):
        load_config(
            None,
            overrides=['filters.per_source={"*": {"clip_embedding": {"weights": "w.pt"}}}'],
        )


def test_curate_dedups_with_open_clip_embeddings(tiny_open_clip, tmp_path):
    from mugv_data.curate import curate, read_rejects
    from mugv_data.synth import scene, write_video
    from mugv_formats import ClipDataset

    folder, _ = tiny_open_clip
    d = tmp_path / "in"
    d.mkdir()
    frames = scene(30, seed=7)
    write_video(d / "a.mp4", frames)
    write_video(d / "a_copy.mp4", frames)  # re-encoded duplicate
    write_video(d / "b.mp4", scene(30, seed=8))
    cfg = load_config(
        None,
        inputs=[str(d)],
        output=str(tmp_path / "out"),
        overrides=[
            "engine.kind=sequential",
            "filters.text.enabled=false",
            "split.min_clip_s=1.0",
            "filters.clip_embedding.enabled=true",
            f"filters.clip_embedding.model_path={folder}",
            "dedup.embedding=clip",
            "dedup.threshold=0.995",
        ],
    )
    curate(cfg, progress=False)
    out = tmp_path / "out"
    kept = sorted(r.source.rsplit("/", 1)[-1] for r in ClipDataset(out).records())
    dup = [r for r in read_rejects(out) if r["stage"] == "dedup"]
    assert kept == ["a.mp4", "b.mp4"]
    assert len(dup) == 1 and dup[0]["source"].endswith("a_copy.mp4")
