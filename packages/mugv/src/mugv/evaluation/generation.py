"""``mugv eval generation``: FVD, CLIP score and VBench / VBench-I2V of generated videos.

Each metric runs when its inputs are given: FVD with ``--reference`` and ``--i3d-weights``,
CLIP score with ``--clip-weights`` (prompts from ``--prompts`` or the dataset's captions),
VBench with ``--vbench-models`` (``--vbench-python`` names the interpreter that has vbench).
At least one must be asked for. Every weights path is local; a missing one is an error naming
it before any video is decoded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "FVD (I3D), CLIP score and VBench / VBench-I2V of generated videos (JSON + Markdown)"


def eval_generation(
    generated: str | Path,
    *,
    reference: str | Path | None = None,
    i3d_weights: str | Path | None = None,
    i3d_features: str = "logits",
    clip_weights: str | Path | None = None,
    clip_model: str = "ViT-B-32",
    clip_frames: int = 8,
    prompts: str | Path | None = None,
    vbench_models: str | Path | None = None,
    vbench_python: str | None = None,
    vbench_suite: str = "vbench",
    vbench_dimensions: list[str] | None = None,
    vbench_images: str | Path | None = None,
    vbench_output: str | Path | None = None,
    device: str | None = None,
    max_videos: int | None = None,
    fvd_extractor=None,
    clip_scorer=None,
) -> dict:
    """The metrics asked for; ``fvd_extractor`` / ``clip_scorer`` replace the weights-loaded
    models (tests use tiny random ones)."""
    import torch

    from mugv.evaluation.fvd import FVD_FRAMES, fvd, i3d_extractor
    from mugv.evaluation.videos import load_videos, read_prompts

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    want_fvd = reference is not None or i3d_weights is not None or fvd_extractor is not None
    want_clip = clip_weights is not None or clip_scorer is not None
    want_vbench = vbench_models is not None
    if not (want_fvd or want_clip or want_vbench):
        raise ValueError(
            "nothing to measure: give --reference and --i3d-weights (FVD), --clip-weights "
            "(CLIP score) and/or --vbench-models (VBench)"
        )
    generated = Path(generated).expanduser()
    if not generated.exists():
        raise FileNotFoundError(f"generated videos {generated} do not exist")
    # every local path first: a missing one fails before any decoding
    if want_fvd:
        if reference is None:
            raise ValueError("FVD needs --reference (a folder of real videos or a clip-shard set)")
        if not Path(reference).expanduser().exists():
            raise FileNotFoundError(f"reference videos {reference} do not exist")
        if fvd_extractor is None:
            if i3d_weights is None:
                raise ValueError("FVD needs --i3d-weights (a local I3D .safetensors file)")
            fvd_extractor = i3d_extractor(str(i3d_weights), i3d_features, device)
    if want_clip and clip_scorer is None:
        from mugv.evaluation.clip_score import ClipScorer

        clip_scorer = ClipScorer.from_local(clip_weights, clip_model, device)
    prompt_map = read_prompts(prompts) if prompts else None

    result: dict = {"command": "mugv eval generation", "generated": str(generated),
                    "device": device, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    videos = load_videos(generated, prompts=prompt_map, max_videos=max_videos)
    result["videos"] = len(videos)
    if want_fvd:
        refs = load_videos(reference, max_frames=FVD_FRAMES, max_videos=max_videos)
        out = fvd([v.frames for v in videos], [v.frames for v in refs], fvd_extractor,
                  device=device)  # fmt: skip
        result["fvd"] = {**out, "reference_set": str(reference), "features": i3d_features,
                         "i3d_weights": None if i3d_weights is None else str(i3d_weights)}  # fmt: skip
    if want_clip:
        from mugv.evaluation.clip_score import clip_scores

        out = clip_scores(clip_scorer, videos, clip_frames)
        result["clip_score"] = {**out, "model": clip_model, "frames": clip_frames,
                                "weights": None if clip_weights is None else str(clip_weights)}  # fmt: skip
    if want_vbench:
        from mugv.evaluation.vbench_suite import CUSTOM_DIMENSIONS, run_vbench

        if not generated.is_dir() or (generated / "dataset.json").is_file():
            raise ValueError("VBench reads a folder of video files (not a clip-shard dataset)")
        vb_prompts = None
        if prompt_map or any(v.prompt for v in videos):
            vb_prompts = {v.path.name: v.prompt for v in videos if v.path and v.prompt}
        result["vbench"] = run_vbench(
            generated,
            vbench_output or (generated.parent / f"{generated.name}-vbench"),
            models=vbench_models,
            dimensions=vbench_dimensions or CUSTOM_DIMENSIONS,
            suite=vbench_suite,
            python=vbench_python,
            prompts=vb_prompts,
            image_folder=vbench_images,
            device=device,
        )
    return result


def markdown(result: dict) -> str:
    lines = [
        f"# mugv eval generation: `{result['generated']}`",
        "",
        f"{result['videos']} generated videos, {result['device']}, {result['date']}.",
        "",
        "| metric | value | notes |",
        "|---|---|---|",
    ]
    if "fvd" in result:
        f = result["fvd"]
        lines.append(f"| FVD (I3D {f['features']}) | {f['fvd']:.3f} | {f['generated']} generated "
                     f"vs {f['reference']} reference videos; {f['padded']} padded |")  # fmt: skip
    if "clip_score" in result:
        c = result["clip_score"]
        lines.append(f"| CLIP score ({c['model']}) | {c['clip_score']:.3f} | mean over videos of "
                     f"100 max(cos, 0), {c['frames']} frames each |")  # fmt: skip
    if "vbench" in result:
        v = result["vbench"]
        for dim, score in v["dimensions"].items():
            lines.append(f"| {v['suite']}: {dim} | {score:.4f} | |")
    if "clip_score" in result:
        lines += ["", "| video | prompt | CLIP score |", "|---|---|---|"]
        for r in result["clip_score"]["videos"]:
            prompt = r["prompt"].replace("|", "\\|")
            lines.append(f"| {r['key']} | {prompt} | {r['clip_score']:.3f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the subcommand
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generated", required=True,
                   help="generated videos: a folder of video files or a clip-shard dataset")  # fmt: skip
    p.add_argument("--reference", help="real videos for FVD (folder or clip-shard dataset)")
    p.add_argument("--i3d-weights", help="local I3D .safetensors (FVD)")
    p.add_argument("--i3d-features", choices=["logits", "pool"], default="logits")
    p.add_argument("--clip-weights", help="local open_clip weights file or folder (CLIP score)")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture of the file")
    p.add_argument("--clip-frames", type=int, default=8, help="frames per video for CLIP score")
    p.add_argument("--prompts", help="JSON object {video file name: prompt}")
    p.add_argument("--vbench-models", help="local VBench model folder (VBENCH_CACHE_DIR)")
    p.add_argument("--vbench-python", help="interpreter that has the vbench package")
    p.add_argument("--vbench-suite", choices=["vbench", "vbench-i2v"], default="vbench")
    p.add_argument("--vbench-dimensions", nargs="+", metavar="DIM",
                   help="VBench dimensions (default: the six that take any prompt)")  # fmt: skip
    p.add_argument("--vbench-images", help="VBench-I2V: folder of the conditioning images")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--max-videos", type=int, help="use only the first N videos of each set")
    p.add_argument("--output", type=Path, default=Path("runs/eval"),
                   help="folder of generation.json and generation.md (default runs/eval)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from mugv.evaluation.results import write_results

    for name in ("clip_frames", "max_videos"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    result = eval_generation(
        args.generated,
        reference=args.reference,
        i3d_weights=args.i3d_weights,
        i3d_features=args.i3d_features,
        clip_weights=args.clip_weights,
        clip_model=args.clip_model,
        clip_frames=args.clip_frames,
        prompts=args.prompts,
        vbench_models=args.vbench_models,
        vbench_python=args.vbench_python,
        vbench_suite=args.vbench_suite,
        vbench_dimensions=args.vbench_dimensions,
        vbench_images=args.vbench_images,
        vbench_output=args.output / "vbench",
        device=args.device,
        max_videos=args.max_videos,
    )
    text = markdown(result)
    js, md = write_results(result, text, args.output, "generation")
    print(text)
    print(f"wrote {js} and {md}")
    return 0
