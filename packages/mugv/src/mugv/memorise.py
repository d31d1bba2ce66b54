"""The memorisation check: is the chain right end to end, not only running?

A small DiT (mugv-dit's debug preset at width 96 and 4 layers: 2 layers of width 48 cannot
place a clip's content from pure noise) is trained (``mugv-dit train``, T2V only, no caption
dropout, noise levels up to pure noise) for a few hundred CPU steps on ONE real clip's
latents with its fixed caption, exported (``mugv-dit export``,
raw weights), and asked through mugv-infer's pipeline (its sampler, shift, normalisation, the
text encoder folder) for that caption at the clip's size, frame count and fps, without CFG.
A model that memorised its one clip regenerates its latents; an untrained one (same
architecture, random weights) does not. A sign, scale or position error between training and
inference (latent normalisation, RoPE positions, sampler direction, timestep shift, text
features) breaks the match.

Writes ``OUT/result.json``::

    trained_rel_error    ||z_gen - z|| / ||z|| of the trained model's sample
    untrained_rel_error  the same for the random model (same seed, same noise)
    mse_to_target        decoded sample vs this clip's VAE reconstruction (pixels in [-1, 1])
    mse_to_others        ... vs every other clip's reconstruction; mse_to_nearest_other: min

and target/regenerated/untrained mp4s (VAE decodes) for the report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from mugv.runner import _die_with_parent
from mugv.stages import script
from mugv.tools import _atomic_json, to_uint8, write_mp4


def _run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise SystemExit(f"{Path(cmd[0]).name} failed with exit code {res.returncode}")


def _one_clip_dataset(src: Path, dst: Path, copies: int, key: str | None = None):
    """Write ``copies`` copies (keys ``KEY-cN``) of one sample of latent dataset ``src`` into a
    new dataset ``dst``, so a training batch holds several noise draws of the same clip."""
    from mugv_formats import LatentDataset, LatentShardWriter

    data = LatentDataset(src)
    samples = sorted(data, key=lambda s: s.record.key)
    pick = next(s for s in samples if key is None or s.record.key == key)
    h = data.header
    header = LatentShardWriter.make_header(
        producer="mugv memorise",
        config={"command": "memorise one-clip subset", "input": str(src), "key": pick.record.key},
        vae_checkpoint_id=h.vae_checkpoint_id,
        latent_channels=h.latent_channels,
        compression=h.compression,
        latent_mean=h.latent_mean,
        latent_std=h.latent_std,
        latents_normalized=h.latents_normalized,
        text_encoder_id=h.text_encoder_id,
        text_dim=h.text_dim,
        max_text_len=h.max_text_len,
    )
    with LatentShardWriter(dst, header) as w:
        for i in range(copies):
            rec = pick.record.model_copy(
                update={"key": f"{pick.record.key}-c{i}", "shard": "", "checksums": {}}
            )
            w.write(rec, pick.latents, pick.text)
    return pick, samples


def run_memorise(
    run: Path,
    out: Path,
    *,
    steps: int,
    lr: float,
    sample_steps: int,
    batch: int = 8,
    model: dict | None = None,
) -> dict:
    import torch

    run, out = run.resolve(), out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pick, samples = _one_clip_dataset(run / "latents-text", out / "data", batch)
    rec = pick.record
    print(f"memorising {rec.key} ({rec.caption!r}), latents {pick.latents.shape}", flush=True)

    dit_cfg = yaml.safe_load((run / "configs" / "dit.yaml").read_text())
    cfg = {
        "preset": dit_cfg.get("preset", "debug"),
        "model": {**dit_cfg.get("model", {}), **(model or {})},
        # Noise levels up to pure noise, where the sampler starts: at 64x64 x 3 latents the
        # resolution shift (r ~ 0.2) would keep training below s ~ 0.8.
        "objective": {
            "task_ratios": {"t2v": 1.0},
            "caption_dropout": 0.0,
            "shift_by_resolution": False,
            "logit_normal_mean": 1.0,
        },
        "data": {"path": str(out / "data"), "tokens_per_batch": 4096, "max_batch_size": batch},
        "train": {"ema_decay": None, "save_every": 0, "progress": False, "seed": 0},
        "curriculum": [
            {
                "name": "memorise",
                "steps": steps,
                "lr": lr,
                "warmup_steps": 10,
                "lr_decay": "cosine",
                "min_lr": lr / 20,
            }
        ],
        "output_dir": str(out / "dit"),
    }
    (out / "dit.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _run([script("mugv-dit"), "train", str(out / "dit.yaml")])
    _run([script("mugv-dit"), "export", "--run", str(out / "dit"), "--output",
          str(out / "trained"), "--weights", "model"])  # fmt: skip

    # the same architecture with random weights
    from mugv_dit.compat import cpu_megatron
    from mugv_dit.export import full_state_dict, load_export, save_export
    from mugv_dit.model import MUGDiT, megatron_config
    from mugv_dit.parallel import destroy_distributed, init_distributed

    model_cfg, _ = load_export(out / "trained")
    init_distributed(1)  # Megatron's layers need their (one-process) groups to be built
    try:
        with cpu_megatron():
            torch.manual_seed(0)
            untrained = full_state_dict(MUGDiT(model_cfg, megatron_config(model_cfg)))
    finally:
        destroy_distributed()
    save_export(out / "untrained", model_cfg, untrained)

    from mugv_infer import MUGVPipeline

    target = torch.from_numpy(np.asarray(pick.latents, dtype=np.float32))
    c, t, h, w = target.shape
    gen = {}
    for name in ("trained", "untrained"):
        pipe = MUGVPipeline.from_parts(out / name, run / "vae", run / "text-encoder")
        res = pipe(
            prompt=[rec.caption],
            negative_prompt=None,
            height=h * 8,
            width=w * 8,
            num_frames=1 + (t - 1) * 8,
            num_inference_steps=sample_steps,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            fps=float(rec.fps),
            aesthetic_score=None,
            output_type="latent",
        )
        gen[name] = res.frames[0].float()
        vae = pipe.vae
    rel = {k: float((v - target).norm() / target.norm()) for k, v in gen.items()}

    with torch.no_grad():

        def decode(z):
            return vae.decode(z[None].float(), window=1).clamp(-1, 1)[0].numpy()

        decoded = {k: decode(v) for k, v in gen.items()}
        recons = {
            s.record.key: decode(torch.from_numpy(np.asarray(s.latents, np.float32)))
            for s in samples
        }
    mse = {k: float(np.mean((decoded["trained"] - r) ** 2)) for k, r in recons.items()}
    others = {k: v for k, v in mse.items() if k != rec.key}
    write_mp4(to_uint8(recons[rec.key]), out / "target.mp4")
    write_mp4(to_uint8(decoded["trained"]), out / "regenerated.mp4")
    write_mp4(to_uint8(decoded["untrained"]), out / "untrained.mp4")
    result = {
        "clip": rec.key,
        "caption": rec.caption,
        "steps": steps,
        "lr": lr,
        "sample_steps": sample_steps,
        "latent_shape": [c, t, h, w],
        "trained_rel_error": rel["trained"],
        "untrained_rel_error": rel["untrained"],
        "mse_to_target": mse[rec.key],
        "mse_to_others": others,
        "mse_to_nearest_other": min(others.values()) if others else None,
    }
    _atomic_json(out / "result.json", result)
    print(json.dumps(result, indent=2), flush=True)
    shutil.rmtree(out / "dit" / "checkpoints", ignore_errors=True)  # the export holds the weights
    return result


if __name__ == "__main__":
    sys.exit("run through `python -m mugv.tools memorise`")
