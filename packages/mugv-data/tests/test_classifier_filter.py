"""Learned-classifier stage: tiny random Hugging Face image and video classifiers saved to a
temp folder; probabilities checked against the transformers pipeline / a direct model call,
verdicts by label and threshold, clear errors for wrong folders and labels."""

from __future__ import annotations

import numpy as np
import pytest
from mugv_data.config import ClassifierConfig
from mugv_data.stages.base import Clip, ClipFrames

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def clip_of(seed: int, n: int = 12) -> Clip:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (n, 40, 56, 3), dtype=np.uint8)
    c = Clip(f"k{seed}", "s", 0, 0, n, 0.0, n / 25, 25.0)
    c.frames = ClipFrames(n, 25.0, lambda idx: arr[list(idx)])
    return c


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls") / "vit"
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        id2label={0: "clean", 1: "effects", 2: "shaky"},
        label2id={"clean": 0, "effects": 1, "shaky": 2},
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    model.save_pretrained(root)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    return root


def test_image_classifier_probabilities_match_the_pipeline(tiny_vit):
    from mugv_data.stages.classifier import ClassifierFilter
    from PIL import Image

    cfg = ClassifierConfig(
        enabled=True,
        model_path=str(tiny_vit),
        reject_labels=["effects", "shaky"],
        num_frames=3,
        batch_size=2,
        threshold=1.0,
    )
    clips = [clip_of(1), clip_of(2)]
    ClassifierFilter(cfg).process(clips)
    pipe = transformers.pipeline("image-classification", model=str(tiny_vit), device="cpu")
    for c in clips:
        frames = c.frames.get(c.frames.evenly(3))
        per_frame = [
            {d["label"]: d["score"] for d in pipe(Image.fromarray(f), top_k=3)} for f in frames
        ]
        want = max(np.mean([p[lab] for p in per_frame]) for lab in ("effects", "shaky"))
        assert c.scores["classifier_score"] == pytest.approx(want, abs=1e-5)
        assert c.kept  # threshold 1.0: recorded, not rejected


def test_image_classifier_rejects_by_label_and_threshold(tiny_vit, tmp_path):
    from mugv_data.stages.classifier import ClassifierFilter

    # a checkpoint that says "effects" for everything
    model = transformers.ViTForImageClassification.from_pretrained(tiny_vit)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 6.0, 0.0]))
    sure = tmp_path / "sure"
    model.save_pretrained(sure)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(sure)
    p = np.exp(6.0) / (np.exp(6.0) + 2.0)
    rej = ClassifierConfig(enabled=True, model_path=str(sure), reject_labels=["effects"])
    c = clip_of(3)
    ClassifierFilter(rej).process([c])
    assert c.rejected_stage == "classifier" and c.scores["classifier_score"] == pytest.approx(p)
    assert c.reason == f"classified 'effects' (p {p:.3f} >= 0.5)"
    keep = rej.model_copy(update={"reject_labels": ["shaky"]})
    c = clip_of(3)
    ClassifierFilter(keep).process([c])
    assert c.kept and c.scores["classifier_score"] == pytest.approx((1 - p) / 2)


def test_video_classifier_matches_a_direct_model_call(tmp_path):
    from mugv_data.stages.classifier import ClassifierFilter

    root = tmp_path / "videomae"
    cfg = transformers.VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_frames=4,
        tubelet_size=2,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        id2label={0: "ok", 1: "speed_ramp"},
        label2id={"ok": 0, "speed_ramp": 1},
    )
    torch.manual_seed(1)
    model = transformers.VideoMAEForVideoClassification(cfg).eval()
    model.save_pretrained(root)
    proc = transformers.VideoMAEImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    proc.save_pretrained(root)
    c = clip_of(4)
    ClassifierFilter(
        ClassifierConfig(
            enabled=True,
            model_path=str(root),
            task="video",
            reject_labels=["speed_ramp"],
            num_frames=4,
            threshold=1.0,
        )
    ).process([c])
    frames = list(c.frames.get(c.frames.evenly(4)))
    px = proc(frames, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = torch.softmax(model(pixel_values=px).logits.double(), -1)[0, 1].item()
    assert c.scores["classifier_score"] == pytest.approx(want, abs=1e-5)


def test_classifier_errors_name_the_problem(tiny_vit, tmp_path):
    from mugv_data.stages.classifier import ClassifierFilter

    with pytest.raises(ValueError, match="needs model_path"):
        ClassifierFilter(ClassifierConfig(enabled=True, reject_labels=["x"]))
    with pytest.raises(ValueError, match="needs reject_labels"):
        ClassifierFilter(ClassifierConfig(enabled=True, model_path=str(tiny_vit)))
    f = ClassifierFilter(
        ClassifierConfig(enabled=True, model_path=str(tmp_path / "nope"), reject_labels=["x"])
    )
    with pytest.raises(ValueError, match="is not a local model folder"):
        f.setup()
    f = ClassifierFilter(
        ClassifierConfig(enabled=True, model_path=str(tiny_vit), reject_labels=["blurry"])
    )
    with pytest.raises(ValueError, match=r"\['blurry'\] are not labels .*clean"):
        f.setup()
