"""``mugv-infer convert``: the stages' files (or the MUG-V release's) -> one diffusers folder.

Inputs, each through its existing importer:

- ``--dit``: a ``mugv.dit-export`` folder (or a diffusers-saved transformer folder), or the
  release's ``dit.pt``, imported by ``mugv-dit import-original`` run as a command (mugv-infer
  never imports mugv-dit; the command must be installed for a ``.pt`` input);
- ``--vae``: a ``mugv.vae-checkpoint`` folder, or the release's ``vae.pt``, imported by
  ``mugv_vae.import_original`` (mugv-infer's one allowed sibling);
- ``--text-encoder``: a local T5 folder (tokenizer + encoder; optional: without it the folder
  generates from ``prompt_embeds`` only).

Output: the folder :meth:`MUGVPipeline.save_pretrained` writes (:mod:`mugv_infer.folder`)
with a model card (``README.md``, diffusers' metadata block: ``library_name``,
``pipeline_tag``, a ``license`` left empty for the user to fill in).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
"""Suffixes of the release's single weight files (read with ``weights_only=True``)."""


def _is_weight_file(path: Path) -> bool:
    return path.is_file() and path.suffix in WEIGHT_FILE_SUFFIXES


def check_inputs(dit: Path, vae: Path, text_encoder: Path | None) -> None:
    """ValueError naming the first input that is neither a folder of ours nor a weight file."""
    for name, path in (("--dit", dit), ("--vae", vae)):
        if not path.exists():
            raise ValueError(f"{name} {path} does not exist")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"{name} folder {path} has no config.json (missing or unfinished)")
        if path.is_file() and not _is_weight_file(path):
            raise ValueError(
                f"{name} {path}: a file must be the release's weights "
                f"({', '.join(WEIGHT_FILE_SUFFIXES)}); a folder must be a mugv checkpoint"
            )
    if text_encoder is not None and not (text_encoder / "config.json").is_file():
        raise ValueError(f"--text-encoder {text_encoder} is not a T5 folder (no config.json)")


def check_output(out: Path, overwrite: bool, inputs) -> None:
    """Refuse, before any model loads, an ``--out`` that :meth:`MUGVPipeline.save_pretrained`
    would refuse (the same rule; nothing is created here)."""
    from mugv_formats.outputs import OutputError, check_not_nested, marker_kind

    from mugv_infer.folder import MODEL_INDEX, refuse_complete_legacy
    from mugv_infer.pipeline import PIPELINE_KIND

    check_not_nested(out, inputs, "--out")
    refuse_complete_legacy(out, PIPELINE_KIND, overwrite, "--out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"--out {out} is a file or a link, not a folder; choose a new --out")
    if out.is_dir() and any(out.iterdir()):
        mark = marker_kind(out)
        if mark is None or mark[0] != PIPELINE_KIND:
            raise OutputError(
                f"--out {out} is a folder mugv-infer did not write; refusing to touch it "
                "(even with --overwrite); choose a new --out"
            )
        if (out / MODEL_INDEX).is_file() and not overwrite:
            raise OutputError(
                f"--out {out} already holds a complete pipeline written by mugv-infer; pass "
                "--overwrite to replace it, or choose a new --out"
            )


def import_release_dit(weights: Path, preset: str, work: Path) -> Path:
    """``mugv-dit import-original`` of the release's ``dit.pt`` into ``work/dit-export``."""
    if importlib.util.find_spec("mugv_dit") is None:
        raise ValueError(
            f"--dit {weights} is the release's weights file: importing it needs mugv-dit "
            "(pip install mugv-dit), or pass a mugv.dit-export folder"
        )
    from mugv_formats.lifecycle import die_with_parent

    out = work / "dit-export"
    cmd = [sys.executable, "-m", "mugv_dit.cli", "import-original", "--weights", str(weights),
           "--output", str(out), "--preset", preset]  # fmt: skip
    res = subprocess.run(
        cmd, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines() or ["(no output)"]
        raise ValueError(f"--dit {weights}: mugv-dit import-original failed: {lines[-1]}")
    return out


def load_vae(path: Path, preset: str, work: Path):
    """An :class:`AutoencoderMUGV` of a ``mugv.vae-checkpoint`` folder or the release's
    ``vae.pt`` (imported with mugv-vae's mapping, then saved as a checkpoint in ``work`` so
    that it gets the same id ``mugv-vae import-original`` would give it)."""
    from mugv_infer.models.vae import AutoencoderMUGV

    if path.is_file():
        from mugv_vae.config import preset as vae_preset
        from mugv_vae.import_original import import_original

        try:
            model = import_original(path, vae_preset(preset))
        except Exception as e:  # the importer names the key or shape
            raise ValueError(f"--vae {path}: {e}") from None
        model.save_pretrained(work / "vae", extra={"imported_from": path.name})
        path = work / "vae"
    try:
        return AutoencoderMUGV.from_checkpoint(path)
    except Exception as e:  # formats errors name the file
        raise ValueError(f"--vae {path}: {e}") from None


def model_card(pipe, sources: dict[str, str]) -> str:
    """README.md of a converted folder: diffusers' metadata block (``license`` left empty:
    the weights' license is the user's to state), what is inside, how to load it."""
    from mugv_infer import __version__

    cfg = pipe.transformer.config
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    tasks = ["text-to-video", "image-to-video"]
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sources.items())
    return f"""---
library_name: diffusers
pipeline_tag: text-to-video
license:  # fill in the license of these weights (e.g. apache-2.0)
tags:
{chr(10).join(f"  - {t}" for t in ["mugv", *tasks])}
---

# MUG-V video generation model (diffusers format)

A MUG-DiT video diffusion transformer ({n_params / 1e9:.3g} B parameters, {cfg.num_layers}
layers, width {cfg.hidden_size}) with the MUG-V 8x8x8 video VAE, its flow-matching Euler
scheduler and a T5 text encoder, saved as a diffusers pipeline (`MUGVPipeline`).
Tasks: {", ".join(tasks)} (first frame), first-last frame, video continuation.

## Use

```python
import mugv_infer  # registers MUGVPipeline with diffusers (pip install mugv-infer)
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER", dtype=torch.bfloat16)
pipe.enable_model_cpu_offload()
video = pipe("a cat walks on the grass", num_frames=105, height=720, width=1280,
             generator=torch.Generator().manual_seed(42)).frames[0]
```

or `mugv-infer ui --model PATH/TO/THIS/FOLDER` for a browser page.

## Converted from

| part | source |
| --- | --- |
{rows}

by `mugv-infer convert` (mugv-infer {__version__}).
"""


def convert(
    dit: Path,
    vae: Path,
    text_encoder: Path | None,
    out: Path,
    *,
    dit_preset: str = "10b",
    vae_preset: str = "mugv",
    torch_dtype=None,
    variant: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the diffusers folder ``out`` from the parts (see the module docstring)."""
    import torch

    from mugv_infer.checks import check_finite_weights
    from mugv_infer.pipeline import MUGVPipeline, load_t5, load_transformer
    from mugv_infer.scheduler import MUGVFlowEulerScheduler

    dtype = torch_dtype or torch.float32
    check_inputs(dit, vae, text_encoder)
    check_output(out, overwrite, [dit, vae, text_encoder])
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = {"transformer": dit.name, "vae": vae.name}
    with tempfile.TemporaryDirectory(prefix=".mugv-convert-", dir=out.parent) as tmp:
        work = Path(tmp)
        export = import_release_dit(dit, dit_preset, work) if dit.is_file() else dit
        transformer = load_transformer(export, dtype)
        vae_model = load_vae(vae, vae_preset, work)
        check_finite_weights(vae_model.model, vae, "vae")
        vae_model = torch.nn.Module.to(vae_model, dtype)  # ModelMixin.to warns on fp32 modules
        tokenizer = encoder = None
        if text_encoder is not None:
            tokenizer, encoder = load_t5(text_encoder, dtype)
            check_finite_weights(encoder, text_encoder, "text encoder")
            sources["text_encoder"] = text_encoder.name
        pipe = MUGVPipeline(transformer, vae_model, MUGVFlowEulerScheduler(), tokenizer, encoder)
        pipe.save_pretrained(
            out, variant=variant, overwrite=overwrite, model_card=model_card(pipe, sources)
        )
    return out
