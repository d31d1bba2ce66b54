"""Captions, tags, balance weights, near-duplicate removal and the aesthetic head."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mugv_data.caption_files import CaptionTable, sidecar_caption
from mugv_data.config import AestheticConfig, load_config
from mugv_data.curate import curate, read_rejects, rebuild_report
from mugv_data.dedup import near_duplicates
from mugv_data.stages.base import Clip, ClipFrames
from mugv_data.synth import scene, write_video
from mugv_data.tags import Tagger, balanced_weights
from mugv_formats import ClipDataset


def test_tagger_words_plurals_and_custom_vocab():
    t = Tagger()
    assert t("Two dogs chase a red car down the street") == ["animal", "building", "vehicle"]
    assert t("A scattering of light") == []  # 'cat' inside a word is not a match
    custom = Tagger({"bike": ["bike", "bicycle"], "rider": ["rider", "cyclist"]})
    assert custom("Cyclists ride bicycles") == ["bike", "rider"]
    with pytest.raises(ValueError, match="no keywords"):
        Tagger({"x": []})


def test_balanced_weights_inverse_frequency():
    tags = [["person"], ["person"], ["person"], ["dog"], []]
    w = balanced_weights(tags, alpha=1.0)
    assert w.mean() == pytest.approx(1.0)
    # person clips share one third each of the weight a lone dog clip gets
    assert w[3] / w[0] == pytest.approx(3.0) and w[4] == pytest.approx(w[3])
    assert np.allclose(balanced_weights(tags, alpha=0.0), 1.0)


def test_near_duplicates_greedy_against_bruteforce():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 8))
    emb = np.concatenate([base, base[[3, 7, 7]] + 0.01 * rng.standard_normal((3, 8))])
    dups = near_duplicates(emb, 0.99, block=7)  # blocks smaller than N exercise the carry-over
    assert set(dups) == {20, 21, 22}
    assert dups[20][0] == 3 and dups[21][0] == 7 and dups[22][0] in (7, 21) and dups[22][0] == 7
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert dups[21][1] == pytest.approx(float(unit[21] @ unit[7]), abs=1e-5)
    assert near_duplicates(np.zeros((0, 4)), 0.9) == {}


def test_caption_table_csv_jsonl_and_sidecar(tmp_path):
    v = tmp_path / "a.mp4"
    v.write_bytes(b"x")
    (tmp_path / "a.txt").write_text(" a man rides a bike \n")
    assert sidecar_caption(v) == "a man rides a bike"
    csv_path = tmp_path / "caps.csv"
    csv_path.write_text(
        "source,caption,start_s,end_s\na.mp4,first half,0,5\na.mp4,second half,5,10\n"
    )
    t = CaptionTable(csv_path)
    assert t.lookup(str(v), 1.0, 3.0) == "first half"
    assert t.lookup(str(v), 4.0, 9.0) == "second half"
    assert t.lookup(str(tmp_path / "b.mp4"), 0, 1) is None
    jl = tmp_path / "caps.jsonl"
    jl.write_text(json.dumps({"source": str(v), "caption": "whole video"}) + "\n")
    assert CaptionTable(jl).lookup(str(v), 2.0, 4.0) == "whole video"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\na.mp4,x\n")
    with pytest.raises(ValueError, match="lacks 'source' or 'caption'"):
        CaptionTable(bad)


def test_curate_captions_tags_weights_and_dedup(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    frames = scene(60, seed=7)
    write_video(d / "a.mp4", frames)
    write_video(d / "a_copy.mp4", frames)  # re-encoded duplicate
    write_video(d / "b.mp4", scene(60, seed=8))
    write_video(d / "c.mp4", scene(60, seed=9))
    (d / "a.txt").write_text("a dog runs on grass")
    (d / "a_copy.txt").write_text("a dog runs on grass")
    (d / "b.txt").write_text("a dog sleeps")
    (d / "c.txt").write_text("a car drives on a road")
    cfg = load_config(
        None,
        inputs=[str(d)],
        output=str(tmp_path / "out"),
        overrides=[
            "engine.kind=sequential",
            "filters.text.enabled=false",
            "split.min_clip_s=1.0",
            "captions.source=sidecar",
            "balance.alpha=1.0",
        ],
    )
    summary = curate(cfg, progress=False)
    out = tmp_path / "out"
    recs = {r.source.rsplit("/", 1)[-1]: r for r in ClipDataset(out).records()}
    assert set(recs) == {"a.mp4", "b.mp4", "c.mp4"}  # a_copy dropped as a near duplicate
    dup = [r for r in read_rejects(out) if r["stage"] == "dedup"]
    assert (
        len(dup) == 1
        and dup[0]["source"].endswith("a_copy.mp4")
        and "near-duplicate of" in dup[0]["reason"]
    )
    # a dataset-level reject is bookkept like a per-clip one: a row with the clip's key and
    # the stage as kind, counted in the summary and in the report (also when rebuilt)
    assert dup[0]["kind"] == "dedup" and dup[0]["key"] not in {r.key for r in recs.values()}
    assert summary.rejects_by_stage["dedup"] == 1
    assert json.loads((out / "summary.json").read_text())["rejects_by_stage"]["dedup"] == 1
    assert "<tr><td>dedup</td><td>1</td></tr>" in (out / "report.html").read_text()
    (out / "report.html").unlink()
    rebuild_report(out)
    assert "<tr><td>dedup</td><td>1</td></tr>" in (out / "report.html").read_text()
    assert "<tr><td>None</td>" not in (out / "report.html").read_text()
    assert recs["a.mp4"].caption == "a dog runs on grass"
    assert recs["a.mp4"].tags == ["animal", "nature"] and recs["c.mp4"].tags == [
        "building",
        "vehicle",
    ]
    w = {k: r.sample_weight for k, r in recs.items()}
    assert sum(w.values()) == pytest.approx(3.0)
    assert w["c.mp4"] > w["b.mp4"]  # 'vehicle' is rarer than 'animal'


@pytest.fixture(scope="module")
def tiny_aesthetic(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mugv_data.stages.aesthetic import build_head

    root = tmp_path_factory.mktemp("aes")
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(root / "clip")
    head = build_head(16).eval()
    torch.save(head.state_dict(), root / "head.pth")
    return root, model, head


def test_aesthetic_scores_match_float64_reference(tiny_aesthetic):
    import torch
    from mugv_data.stages.aesthetic import AestheticFilter, clip_preprocess

    root, model, head = tiny_aesthetic
    f = AestheticFilter(
        AestheticConfig(
            enabled=True,
            min=None,
            clip_path=str(root / "clip"),
            head_path=str(root / "head.pth"),
            device="cpu",
            batch_size=3,
            num_frames=2,
        )
    )
    clips = []
    for seed in range(3):
        arr = np.stack(scene(10, h=48, w=64, seed=seed))
        clips.append(
            Clip(
                key=f"k-{seed:04d}",
                source="s",
                index=seed,
                start_frame=0,
                end_frame=10,
                start_s=0,
                end_s=0.4,
                fps=25,
                frames=ClipFrames(10, 25.0, lambda i, a=arr: a[list(i)]),
            )
        )
    f.process(clips)
    m64, h64 = model.double(), head.double()
    for c in clips:
        frames = c.frames.get(c.frames.evenly(2))
        with torch.no_grad():
            e = m64(
                pixel_values=torch.from_numpy(clip_preprocess(frames, 32)).double()
            ).image_embeds
            e = e / e.norm(dim=-1, keepdim=True)
            ref = h64(e).mean().item()
        assert c.scores["aesthetic"] == pytest.approx(ref, abs=1e-4)
        assert c.extra["clip_embedding"].shape == (16,)
    assert len({round(c.scores["aesthetic"], 6) for c in clips}) == 3
    model.float(), head.float()


def test_aesthetic_head_shape_mismatch_is_clear(tiny_aesthetic, tmp_path):
    import torch
    from mugv_data.stages.aesthetic import AestheticScorer, build_head

    root, _, _ = tiny_aesthetic
    torch.save(build_head(8).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not a LAION aesthetic head for 16-d"):
        AestheticScorer.from_paths(root / "clip", tmp_path / "wrong.pth", device="cpu")
    with pytest.raises(ValueError, match="not a local model folder"):
        AestheticScorer.from_paths(tmp_path / "nope", tmp_path / "wrong.pth", device="cpu")


def _kept(key: str, source: str = "/v/a.mp4", embedding=(1.0, 0.0)):
    from mugv_data.per_source import ClipOutcome, SourceResult
    from mugv_data.stages.dataset import KeptClip

    clip = ClipOutcome(key, 0, 0, 10, 0.0, 1.0, {}, None, None, embedding=list(embedding))
    return KeptClip(SourceResult(source, "sid"), clip)


def test_dataset_stages_reject_like_clip_stages_and_later_stages_skip_rejects():
    from mugv_data.stages.dataset import DatasetStage, run_dataset_stages

    seen: list[list[str]] = []

    class DropB(DatasetStage):
        name = "drop_b"

        def process(self, clips):
            seen.append([k.clip.key for k in clips])
            for k in clips:
                if k.clip.key == "b":
                    k.clip.scores["drop_b"] = 1.0
                    k.reject(self.name, "b is not wanted")

    class Later(DatasetStage):
        name = "later"

        def process(self, clips):
            seen.append([k.clip.key for k in clips])

    clips = [_kept("a"), _kept("b", "/v/b.mp4"), _kept("c")]
    kept, rejects = run_dataset_stages([DropB(), Later()], clips)
    assert [k.clip.key for k in kept] == ["a", "c"]
    assert seen == [["a", "b", "c"], ["a", "c"]]
    assert rejects == [
        dict(source="/v/b.mp4", key="b", stage="drop_b", kind="drop_b", reason="b is not wanted")
    ]
    assert clips[1].clip.rejected_stage == "drop_b" and clips[1].clip.scores == {"drop_b": 1.0}


def test_dedup_stage_rejects_the_later_duplicate_with_its_similarity():
    from mugv_data.stages.dataset import DedupStage, run_dataset_stages

    cfg = load_config(None, overrides=["dedup.threshold=0.9", "dedup.embedding=thumbnail"])
    clips = [_kept("a", embedding=(1, 0)), _kept("b", embedding=(0, 1)), _kept("a2")]
    kept, rejects = run_dataset_stages([DedupStage(cfg)], clips)
    assert [k.clip.key for k in kept] == ["a", "b"]
    assert [(r["key"], r["stage"], r["kind"]) for r in rejects] == [("a2", "dedup", "dedup")]
    assert rejects[0]["reason"] == "near-duplicate of a (cos 1.0000 >= 0.9)"
    assert clips[2].clip.scores["dedup_similarity"] == pytest.approx(1.0)


def test_vlm_caption_stage_rejects_an_unreadable_clip_and_captions_the_rest(tmp_path, monkeypatch):
    """A staged clip the VLM cannot read is one ``captions`` reject with the error; the
    others are captioned (a stub stands in for the model)."""
    import mugv_data.caption_vlm as caption_vlm
    from mugv_data.stages.dataset import CaptionStage, run_dataset_stages

    class Stub:
        def caption_frames(self, batch):
            return [f"{len(f)} frames" for f in batch]

    monkeypatch.setattr(caption_vlm.VLMCaptioner, "from_config", classmethod(lambda c, cc: Stub()))
    write_video(tmp_path / "good.mp4", scene(20, seed=3))
    (tmp_path / "bad.mp4").write_bytes(b"not an mp4")
    cfg = load_config(None, overrides=["captions.source=vlm", "captions.num_frames=4"])
    stage = CaptionStage(cfg, lambda key: tmp_path / f"{key}.mp4")
    clips = [_kept("good"), _kept("bad")]
    kept, rejects = run_dataset_stages([stage], clips)
    assert [(k.clip.key, k.caption) for k in kept] == [("good", "4 frames")]
    assert [(r["key"], r["stage"], r["kind"]) for r in rejects] == [("bad", "captions", "captions")]
    assert rejects[0]["reason"].startswith(f"{tmp_path / 'bad.mp4'}: cannot read the clip")
