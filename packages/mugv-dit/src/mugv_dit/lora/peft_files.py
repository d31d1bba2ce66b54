"""peft adapter folders of a LoRA-trained MUG-DiT (``adapter_config.json`` +
``adapter_model.safetensors``), written without peft itself.

Tensors are named as peft's ``PeftModel.save_pretrained`` names them on mugv-infer's
diffusers-side ``MUGDiTTransformer3DModel``, whose modules carry mugv-dit's names
(``base_model.model.blocks.3.mlp.fc1.lora_A.weight``); ``target_modules`` is a regular
expression over exactly the adapted block linears (the embedders' ``fc1``/``fc2`` are not
matched). ``PeftModel.from_pretrained(transformer, folder)`` and mugv-infer's ``load_lora``
load it. The folder is ours (kind :data:`ADAPTER_KIND`), written under the writers' rule of
:mod:`mugv_formats.outputs`, ``adapter_config.json`` last.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from mugv_formats import atomic_write_text
from mugv_formats.atomic import atomic_open
from mugv_formats.outputs import OutputError, claim_output, marker_kind, output_lock
from safetensors.torch import save

from mugv_dit.lora.config import LoraConfig
from mugv_dit.lora.merge import adapter_bases

ADAPTER_KIND = "mugv-dit.lora-adapter"
PEFT_PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def target_regex(bases: list[str]) -> str:
    """peft ``target_modules`` (a regular expression, full match) selecting exactly the
    block linears named in ``bases`` (``blocks.<i>.<linear>``) in every block."""
    linears = sorted({b.split(".", 2)[2] for b in bases})
    return r"blocks\.\d+\.(?:" + "|".join(re.escape(n) for n in linears) + ")"


def peft_adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters of a full mugv-dit state dict under peft's saved names."""
    out = {}
    for base in adapter_bases(state):
        for part in ("lora_A", "lora_B"):
            out[f"{PEFT_PREFIX}{base}.{part}.weight"] = state[f"{base}.{part}"]
    return out


def peft_config(cfg: LoraConfig, bases: list[str], base_model: str | None = None) -> dict:
    """``adapter_config.json`` of adapters trained with ``cfg`` on the linears ``bases``."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target_regex(bases),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def save_peft_adapter(
    path: str | Path,
    state: dict[str, torch.Tensor],
    cfg: LoraConfig,
    *,
    base_model: str | None = None,
    overwrite: bool = False,
    inputs=(),
) -> Path:
    """Write the adapters of the full state dict ``state`` as a peft folder at ``path``. A
    complete adapter folder of ours is replaced only with ``overwrite``; anything else that
    is not ours is refused (:class:`~mugv_formats.outputs.OutputError`)."""
    path = Path(path)
    bases = adapter_bases(state)
    if not bases:
        raise ValueError("the weights hold no LoRA adapter (was the run trained with lora?)")
    tensors = {k: v.detach().contiguous().cpu() for k, v in peft_adapter_state(state).items()}
    with output_lock(path, "--output"):
        mark = marker_kind(path) if path.is_dir() and not path.is_symlink() else None
        complete = mark is not None and mark[0] == ADAPTER_KIND and (path / CONFIG_FILE).is_file()
        if complete and not overwrite:
            raise OutputError(
                f"--output {path} already holds a complete LoRA adapter folder; pass "
                "--overwrite to replace it, or choose a new --output"
            )
        claim = claim_output(path, ADAPTER_KIND, overwrite=True, inputs=inputs, what="--output")
        folder = claim.write_path
        (folder / CONFIG_FILE).unlink(missing_ok=True)  # an interrupted write: redone whole
        with atomic_open(folder / WEIGHTS_FILE) as f:
            f.write(save(tensors, metadata={"format": "pt"}))
        config = peft_config(cfg, bases, base_model)
        atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
        claim.commit()
    return path
