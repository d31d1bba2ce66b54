"""Qwen2-VL captioner with a tiny random model of the real architecture (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from mugv_data.config import CaptionConfig, load_config
from mugv_data.curate import curate
from mugv_data.synth import scene, write_video
from mugv_formats import ClipDataset

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


@pytest.fixture(scope="module")
def tiny_qwen2vl(tmp_path_factory):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("qwen2vl")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        ["a dog runs on the grass", "a car drives down the road", "describe this video"], trainer
    )
    ft = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    ft.save_pretrained(root)  # no chat template: the captioner's built-in Qwen2-VL one is used
    tf.Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16).save_pretrained(root)
    ids = {t: ft.convert_tokens_to_ids(t) for t in SPECIAL}
    cfg = tf.Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(ft),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [1, 1, 2],
            },
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            bos_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    tf.Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(root)
    return root


def test_batched_captions_equal_one_by_one(tiny_qwen2vl):
    from mugv_data.caption_vlm import VLMCaptioner

    cap = VLMCaptioner.from_config(
        CaptionConfig(
            source="vlm",
            model_path=str(tiny_qwen2vl),
            device="cpu",
            num_frames=2,
            frame_short_side=56,
            max_new_tokens=6,
            batch_size=3,
        )
    )
    rng = np.random.default_rng(0)
    clips = [
        rng.integers(0, 256, (2, 56, 84, 3), dtype=np.uint8),
        rng.integers(0, 256, (3, 56, 56, 3), dtype=np.uint8),  # different length and size
        rng.integers(0, 256, (2, 84, 56, 3), dtype=np.uint8),
    ]
    batched = cap.caption_frames(clips)
    single = [cap.caption_frames([c])[0] for c in clips]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_vlm_captions_flow_into_clip_shards(tiny_qwen2vl, tmp_path):
    from mugv_data.caption_vlm import VLMCaptioner

    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "a.mp4", scene(60, seed=1))
    write_video(d / "b.mp4", scene(60, seed=2))
    over = [
        "engine.kind=sequential",
        "filters.text.enabled=false",
        "split.min_clip_s=1.0",
        "captions.source=vlm",
        f"captions.model_path={tiny_qwen2vl}",
        "captions.device=cpu",
        "captions.num_frames=2",
        "captions.frame_short_side=56",
        "captions.max_new_tokens=6",
        "captions.batch_size=2",
    ]
    cfg = load_config(None, inputs=[str(d)], output=str(tmp_path / "out"), overrides=over)
    curate(cfg, progress=False)
    cap = VLMCaptioner.from_config(cfg.captions)
    items = list(ClipDataset(tmp_path / "out"))
    assert len(items) == 2
    for rec, mp4 in items:
        p = tmp_path / f"{rec.key}.mp4"
        p.write_bytes(mp4)
        assert rec.caption == cap.caption_files([p])[0]


def test_missing_model_folder_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    from mugv_data.caption_vlm import VLMCaptioner

    with pytest.raises(ValueError, match="not a local model folder"):
        VLMCaptioner.from_config(
            CaptionConfig(source="vlm", model_path=str(tmp_path / "nope"), device="cpu")
        )


def _tiny_aesthetic(root):
    """A tiny random CLIP vision tower + LAION-style head saved as local weights."""
    import torch
    import transformers
    from mugv_data.stages.aesthetic import build_head

    cfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(cfg).eval().save_pretrained(root / "clip")
    torch.save(build_head(16).eval().state_dict(), root / "head.pth")
    return root / "clip", root / "head.pth"


@pytest.mark.slow  # spawned workers import torch + transformers per pool: minutes on 2 cores
@pytest.mark.timeout(1800)
def test_gpu_stages_run_on_workers_never_in_the_driver(tiny_qwen2vl, tmp_path, monkeypatch):
    """The CLIP/aesthetic stage and the VLM captioner load and run in the engine's (spawned)
    workers: in this driver process they are made to fail, and the run still ends with CLIP
    embeddings, aesthetic scores and the captions the VLM gives when called directly."""
    from mugv_data.caption_vlm import VLMCaptioner
    from mugv_data.stages.aesthetic import AestheticScorer

    clip_path, head_path = _tiny_aesthetic(tmp_path)
    d = tmp_path / "in"
    d.mkdir()
    write_video(d / "a.mp4", scene(40, seed=3))
    over = [
        "engine.kind=process", "engine.workers=1", "filters.text.enabled=false",
        "split.min_clip_s=1.0", "filters.aesthetic.enabled=true", "filters.aesthetic.min=null",
        f"filters.aesthetic.clip_path={clip_path}", f"filters.aesthetic.head_path={head_path}",
        "filters.aesthetic.device=cpu", "captions.source=vlm", f"captions.model_path={tiny_qwen2vl}",
        "captions.device=cpu", "captions.num_frames=2", "captions.frame_short_side=56",
        "captions.max_new_tokens=6", "captions.batch_size=2",
    ]  # fmt: skip
    cfg = load_config(None, inputs=[str(d)], output=str(tmp_path / "out"), overrides=over)

    def not_here(*a, **k):
        raise AssertionError("a GPU stage model was loaded in the driver")

    monkeypatch.setattr(VLMCaptioner, "from_config", classmethod(not_here))
    monkeypatch.setattr(AestheticScorer, "from_paths", classmethod(not_here))
    curate(cfg, progress=False)
    monkeypatch.undo()

    cap = VLMCaptioner.from_config(cfg.captions)
    items = list(ClipDataset(tmp_path / "out"))
    assert items
    for rec, mp4 in items:
        assert "aesthetic" in rec.scores
        p = tmp_path / f"{rec.key}.mp4"
        p.write_bytes(mp4)
        assert rec.caption == cap.caption_files([p])[0]


def test_declared_resources_reach_the_workers(tmp_path):
    """GPU stages declare GPUs and memory; the Ray engine asks for exactly those per actor."""
    from mugv_data.dataset_units import caption_resources
    from mugv_data.engines import RayEngine
    from mugv_data.per_source import WORKER_BASE_MB, worker_resources

    cfg = load_config(
        None,
        overrides=[
            "filters.aesthetic.enabled=true", "filters.aesthetic.device=cuda",
            f"filters.aesthetic.clip_path={tmp_path}", f"filters.aesthetic.head_path={tmp_path}",
            "captions.source=vlm", "captions.device=cuda:0", "decode.cache_mb=256",
        ],
    )  # fmt: skip
    r = worker_resources(cfg)
    assert (r.cpus, r.gpus, r.memory_mb) == (1.0, 0.5, WORKER_BASE_MB + 256)
    c = caption_resources(cfg)
    assert (c.gpus, c.memory_mb) == (1.0, 4096)
    opts = RayEngine.actor_options(object.__new__(RayEngine), r)
    assert opts == {"num_cpus": 1.0, "num_gpus": 0.5, "memory": (WORKER_BASE_MB + 256) << 20}
    cpu = load_config(None, overrides=["captions.source=vlm", "captions.device=cpu"])
    assert caption_resources(cpu).gpus == 0 and worker_resources(cpu).gpus == 0


def test_vllm_backend_without_vllm_is_a_clear_error(tmp_path):
    """captions.backend=vllm is optional: where vllm does not import, the error names it."""
    import importlib.util

    from mugv_data.caption_vlm import load_captioner

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    cfg = CaptionConfig(source="vlm", backend="vllm", model_path=str(tmp_path))
    with pytest.raises(ValueError, match="captions.backend=vllm needs the vllm package"):
        load_captioner(cfg)


def test_vllm_backend_sends_the_transformers_prompts_to_the_engine(tiny_qwen2vl, monkeypatch):
    """With a stand-in ``vllm`` module (the real one is not installed here): the engine is
    built from the local folder, gets the same chat prompt as the transformers backend (one
    image slot per frame), the frames as images and greedy sampling of max_new_tokens, and
    its outputs come back in order. Not a run of vLLM itself."""
    import sys
    import types

    from mugv_data.caption_vlm import VLMCaptioner, chat_prompt, load_captioner
    from transformers import AutoTokenizer

    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            seen["params"] = kw

    class LLM:
        def __init__(self, **kw):
            seen["llm"] = kw

        def generate(self, requests, params, use_tqdm=True):
            seen["requests"] = requests
            out = types.SimpleNamespace
            return [out(outputs=[out(text=f" caption {i} ")]) for i in range(len(requests))]

    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
    )
    cfg = CaptionConfig(
        source="vlm", backend="vllm", model_path=str(tiny_qwen2vl), num_frames=3, max_new_tokens=7
    )
    cap = load_captioner(cfg)
    clips = [np.stack(scene(3, 56, 84, seed=s)) for s in (1, 2)]
    assert cap.caption_frames(clips) == ["caption 0", "caption 1"]
    assert seen["llm"]["model"] == str(tiny_qwen2vl)
    assert seen["llm"]["limit_mm_per_prompt"] == {"image": 3}
    assert seen["params"] == {"temperature": 0.0, "max_tokens": 7}
    tok = AutoTokenizer.from_pretrained(str(tiny_qwen2vl))
    ref = VLMCaptioner.__new__(VLMCaptioner)
    ref.tokenizer, ref.config = tok, cfg
    for req, frames in zip(seen["requests"], clips, strict=True):
        assert req["prompt"] == ref._prompt(3) == chat_prompt(tok, cfg.prompt, 3)
        assert req["prompt"].count("<|image_pad|>") == 3
        imgs = req["multi_modal_data"]["image"]
        assert len(imgs) == 3
        assert all(np.array_equal(np.asarray(i), f) for i, f in zip(imgs, frames, strict=True))
