"""GPU stages throughput on one GPU: aesthetic (CLIP ViT-L/14 + LAION head) and Qwen2-VL-2B
captions, both with RANDOM weights of the real architectures (speed does not depend on the
weights; generation is forced to exactly --new-tokens tokens).

    PYTHONPATH=packages/mugv-formats/src:packages/mugv-data/src \
        python packages/mugv-data/benchmarks/gpu_stages.py --json $OUT/gpu_stages.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np
import torch
from mugv_data.caption_vlm import VLMCaptioner
from mugv_data.config import AestheticConfig, CaptionConfig
from mugv_data.stages.aesthetic import AestheticFilter, AestheticScorer, build_head
from mugv_data.stages.base import Clip, ClipFrames

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


DEV = "cuda"
SMOKE = False  # --smoke: tiny shapes on CPU, to check the script without a GPU


def sync_time() -> float:
    if DEV == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def fake_clips(n: int, frames: int, h: int = 360, w: int = 640) -> list[Clip]:
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (16, h, w, 3), dtype=np.uint8)
    clips = []
    for i in range(n):
        idx = [(i + j) % 16 for j in range(frames)]
        arr = pool[idx]
        clips.append(
            Clip(
                key=f"c-{i:05d}",
                source="bench",
                index=i,
                start_frame=0,
                end_frame=frames,
                start_s=0.0,
                end_s=frames / 25,
                fps=25.0,
                frames=ClipFrames(frames, 25.0, lambda k, a=arr: a[list(k)]),
            )
        )
    return clips


def bench_aesthetic(n_clips: int, batch: int) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    dims = dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16
    )
    if SMOKE:
        dims = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
    cfg = CLIPVisionConfig(
        **dims,
        image_size=224,
        patch_size=14,
        projection_dim=768,
    )
    with torch.device(DEV):
        model = CLIPVisionModelWithProjection(cfg).to(torch.bfloat16)
    stage = AestheticFilter(
        AestheticConfig(
            enabled=True,
            min=None,
            clip_path="-",
            head_path="-",
            device=DEV,
            batch_size=batch,
            num_frames=1,
        )
    )
    stage._scorer = AestheticScorer(model, build_head(768), DEV)
    stage.process(fake_clips(batch, 1))  # warm-up
    clips = fake_clips(n_clips, 1)
    t = sync_time()
    stage.process(clips)
    dt = sync_time() - t
    pix = torch.randn(batch, 3, 224, 224, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        model(pixel_values=pix)
        t = sync_time()
        for _ in range(10):
            model(pixel_values=pix)
        dt_model = (sync_time() - t) / 10
    return {
        "stage": "aesthetic",
        "model": "CLIP ViT-L/14 vision + projection (random) + LAION MLP, bf16",
        "clips": n_clips,
        "frames_per_clip": 1,
        "batch_size": batch,
        "seconds": round(dt, 4),
        "clips_per_s": round(n_clips / dt, 1),
        "model_only_images_per_s": round(batch / dt_model, 1),
        "note": "stage time includes CPU preprocessing (resize/crop/normalise, 1 thread) of 360x640 frames",
    }


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["describe this video in detail subjects actions scene camera motion"],
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def bench_captions(n_clips: int, batch: int, frames: int, new_tokens: int) -> dict:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    tok = tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    text = dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12
    )
    vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16)
    if SMOKE:
        text = dict(
            hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        )
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2)
    cfg = Qwen2VLConfig(  # Qwen2-VL-2B shapes
        text_config=dict(
            vocab_size=151936,
            **text,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 2, 4] if SMOKE else [16, 24, 24],
            },
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            bos_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            **vision,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.device(DEV):
        model = Qwen2VLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.generation_config.min_new_tokens = new_tokens
    cc = CaptionConfig(
        source="vlm",
        model_path="-",
        device=DEV,
        batch_size=batch,
        num_frames=frames,
        frame_short_side=224,
        max_new_tokens=new_tokens,
    )
    cap = VLMCaptioner(cc, model, tok, Qwen2VLImageProcessor())
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (frames, 224, 398, 3), dtype=np.uint8) for _ in range(n_clips)]
    cap.caption_frames(clips[:batch])  # warm-up
    t = sync_time()
    for a in range(0, n_clips, batch):
        cap.caption_frames(clips[a : a + batch])
    dt = sync_time() - t
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "stage": "captions",
        "model": f"Qwen2-VL-2B architecture (random, {n_params / 1e9:.2f} B params), bf16, sdpa",
        "clips": n_clips,
        "frames_per_clip": frames,
        "frame_size": "224x398 -> 224x392 (112 tokens/frame)",
        "batch_size": batch,
        "new_tokens": new_tokens,
        "seconds": round(dt, 3),
        "clips_per_s": round(n_clips / dt, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--aesthetic-clips", type=int, default=1024)
    ap.add_argument("--caption-clips", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    global DEV, SMOKE
    if args.smoke:
        DEV, SMOKE = "cpu", True
    rows = [bench_aesthetic(args.aesthetic_clips, 64)]
    print(json.dumps(rows[-1]), flush=True)
    rows.append(bench_captions(args.caption_clips, 8, 8, args.new_tokens))
    print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "mugv-data GPU stages, clips/s on one GPU",
        "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "command": "PYTHONPATH=packages/mugv-formats/src:packages/mugv-data/src python "
        "packages/mugv-data/benchmarks/gpu_stages.py --json $OUT/gpu_stages.json",
        "results": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
