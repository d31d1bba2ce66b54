"""The umbrella's own glue steps, each run as ``python -m mugv.tools NAME ...`` by the pipeline.

- ``text-encoder``: a local T5 folder that ``mugv-infer --text-encoder`` loads and that gives
  the same features as ``mugv-dit embed-text --text-encoder tiny-random`` (the demo's text
  encoder): the tiny random T5 with a byte tokenizer, saved with transformers' ``ByT5Tokenizer``
  (ids = byte + 3) and its embedding rows moved by one to match mugv-dit's ids (byte + 2).
  A real encoder folder is copied as is.
- ``prompts``: the distinct captions of a latent dataset (JSON list).
- ``kto-labels``: pass/fail labels over make-pairs' pool (real passes, generated fails).
- ``infer``: ``exec`` a ``mugv-infer generate`` command with one ``--prompt`` per caption.
- ``chain``: several of the pipeline's commands (console scripts of this environment, or
  ``python -m mugv.tools ...``) one after another in this one process, each through its own
  entry point, so that the imports they share (torch, Megatron-Core, diffusers: seconds each
  on 2 cores) are paid once; it stops at the first that fails, with its exit status.
- ``recon``: each curated clip of a run through its VAE (posterior mean): original and
  reconstruction as mp4, PSNR (JSON).
- ``first-frame``: the first curated clip's first frame at the generation size (I2V input).
- ``memorise`` and ``report``: see :mod:`mugv.memorise` and :mod:`mugv.report`.

Everything here reads and writes stage formats only; writes are atomic (a ``.partial`` folder
renamed at the end, or mugv-formats' atomic writers). Torch, transformers and the stage
packages' models are imported by the tools that use them: each tool is its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
from mugv_formats import ClipDataset, LatentDataset, atomic_open, atomic_write_text

from mugv.chain import chain, run_in_process
from mugv.layout import RunLayout
from mugv.media import to_uint8, write_mp4
from mugv.memorise import run_memorise
from mugv.report import write_report


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2))


def text_encoder_folder(source: str, out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")  # the runner cleared it (a scratch path)
    if source != "tiny-random":
        shutil.copytree(source, tmp)
        tmp.rename(out)
        return
    import torch
    from mugv_dit.text import TINY_RANDOM, TextEncoder
    from transformers import ByT5Tokenizer

    enc = TextEncoder(TINY_RANDOM, device="cpu")
    emb = enc.model.get_input_embeddings().weight
    with torch.no_grad():
        # mugv-dit's byte tokenizer: id = 2 + byte (pad 0, eos 1); ByT5's: id = 3 + byte
        emb[3:259] = emb[2:258].clone()
    enc.model.save_pretrained(tmp)
    ByT5Tokenizer(extra_ids=0).save_pretrained(tmp)
    tmp.rename(out)


def prompts(latents: Path, out: Path) -> None:
    caps = []
    for r in LatentDataset(latents).records():
        if r.caption and r.caption not in caps:
            caps.append(r.caption)
    if not caps:
        raise SystemExit(f"{latents}: no sample has a caption")
    write_json(out, caps)


def kto_labels(latents: Path, out: Path) -> None:
    """Automatic KTO labels over a make-pairs pool: real clips pass, generated samples fail."""
    rows = []
    for r in LatentDataset(latents).records():
        if r.key.startswith(("real-", "gen-")):
            label = "pass" if r.key.startswith("real-") else "fail"
            rows.append({"key": r.key, "label": label, "label_source": "real-vs-generated"})
    if not {r["label"] for r in rows} >= {"pass", "fail"}:
        raise SystemExit(f"{latents}: needs real-* and gen-* samples (mugv-align make-pairs)")
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))


def infer_argv(args: argparse.Namespace, cmd: list[str]) -> list[str]:
    """``cmd`` (a ``mugv-infer generate`` command) with one ``--prompt`` per caption."""
    caps = args.prompt_list or json.loads(Path(args.prompts).read_text())
    caps = caps[: args.max_prompts] if args.max_prompts else caps
    argv = [*cmd]
    for c in caps:
        argv += ["--prompt", c]
    return argv


def infer(args: argparse.Namespace, cmd: list[str]) -> None:
    argv = infer_argv(args, cmd)
    os.execv(argv[0], argv)  # same process: dies with the pipeline like any stage


def _clips(path: Path, frames: int, size: tuple[int, int]):
    from mugv_vae.video import load_clip

    for record, mp4 in ClipDataset(path):
        yield record, load_clip(mp4, frames, [size], where=record.key)


def recon(run: RunLayout, resolution: str, frames: int) -> None:
    import torch
    from mugv_vae.model import MUGVAE
    from mugv_vae.video import parse_resolution

    warnings.simplefilter("ignore")
    size = parse_resolution(resolution)
    vae = MUGVAE.from_pretrained(run.vae).eval()
    tmp = run.recon_partial  # the runner cleared it (a scratch path): made afresh
    tmp.mkdir(parents=True)
    rows = []
    for record, x_CTHW in _clips(run.clips, frames, size):
        with torch.no_grad():
            y = vae.decode(vae.encode(x_CTHW[None]), window=1).clamp(-1, 1)[0]
        a, b = to_uint8(x_CTHW.numpy()), to_uint8(y.numpy())
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        psnr = float(10 * np.log10(255.0**2 / max(mse, 1e-10)))
        original, reconstruction = run.recon_pair(record.key)
        write_mp4(a, tmp / original)
        write_mp4(b, tmp / reconstruction)
        rows.append(
            {"key": record.key, "caption": record.caption, "frames": int(a.shape[0]), "psnr": psnr}
        )
        print(f"{record.key}: PSNR {psnr:.2f} dB", flush=True)
    write_json(tmp / run.recon_table.name, {"resolution": resolution, "clips": rows})
    tmp.rename(run.recon)


def first_frame(clips: Path, resolution: str, out: Path) -> None:
    from mugv_vae.video import parse_resolution
    from PIL import Image

    _, x_CTHW = next(iter(_clips(clips, 1, parse_resolution(resolution))))
    with atomic_open(out) as f:
        Image.fromarray(to_uint8(x_CTHW.numpy())[0]).save(f, format="PNG")


def main(argv: list[str] | None = None, *, in_process: bool = False) -> int:
    """The tools' command line; ``in_process`` (a step of :func:`chain`): ``infer`` runs its
    command here instead of ``exec``-ing it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(prog="python -m mugv.tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("text-encoder")
    s.add_argument("--source", required=True)
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("prompts")
    s.add_argument("--latents", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("kto-labels")
    s.add_argument("--latents", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("infer")
    s.add_argument("--prompts", type=Path)
    s.add_argument("--prompt-list", nargs="*")
    s.add_argument("--max-prompts", type=int, default=0)
    s = sub.add_parser("recon")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--resolution", default="64x64")
    s.add_argument("--frames", type=int, default=17)
    s = sub.add_parser("first-frame")
    s.add_argument("--clips", type=Path, required=True)
    s.add_argument("--resolution", default="64x64")
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("memorise")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--sample-steps", type=int, default=16)
    s.add_argument("--preset", default="debug", help="mugv-dit preset of the memorising DiT")
    s.add_argument("--model", type=json.loads, default={}, help="its model section (JSON)")
    s = sub.add_parser("report")
    s.add_argument("--run", type=Path, required=True)
    s = sub.add_parser("chain")
    s.add_argument("commands", type=json.loads, help="JSON list of commands (argument lists)")
    a = p.parse_args(argv)
    if a.cmd == "text-encoder":
        text_encoder_folder(a.source, a.out)
    elif a.cmd == "prompts":
        prompts(a.latents, a.out)
    elif a.cmd == "kto-labels":
        kto_labels(a.latents, a.out)
    elif a.cmd == "infer":
        if not tail:
            p.error("infer needs -- COMMAND ...")
        if in_process:
            return run_in_process(infer_argv(a, tail))
        infer(a, tail)
    elif a.cmd == "recon":
        recon(RunLayout(a.run.resolve()), a.resolution, a.frames)
    elif a.cmd == "first-frame":
        first_frame(a.clips, a.resolution, a.out)
    elif a.cmd == "memorise":
        run = RunLayout(a.run.resolve())
        run_memorise(
            run, steps=a.steps, lr=a.lr, sample_steps=a.sample_steps, preset=a.preset,
            model=a.model,
        )  # fmt: skip
    elif a.cmd == "report":
        write_report(RunLayout(a.run.resolve()))
    elif a.cmd == "chain":
        ok = isinstance(a.commands, list) and all(
            isinstance(c, list) and c and all(isinstance(x, str) for x in c) for c in a.commands
        )
        if not ok:
            p.error(f"chain: COMMANDS must be a JSON list of argument lists, got {a.commands!r}")
        return chain(a.commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
