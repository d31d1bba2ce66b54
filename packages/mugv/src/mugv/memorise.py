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

Writes ``RUN/memorise/result.json`` (paths: :class:`mugv.layout.RunLayout`)::

    trained_rel_error    ||z_gen - z|| / ||z|| of the trained model's sample
    untrained_rel_error  the same for the random model (same seed, same noise)
    mse_to_target        decoded sample vs this clip's VAE reconstruction (pixels in [-1, 1])
    mse_to_others        ... vs every other clip's reconstruction; mse_to_nearest_other: min

and target/regenerated/untrained mp4s (VAE decodes) for the report.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
from mugv_formats import LatentDataset, LatentShardWriter, atomic_write_text

from mugv.chain import run_in_process
from mugv.layout import RunLayout
from mugv.media import to_uint8, write_mp4
from mugv.runner import script


def _run(cmd: list[str]) -> None:
    """The console-script command ``cmd`` in this process (:func:`mugv.chain.run_in_process`:
    its own entry point; Megatron and torch are imported once for the training, the export
    and the samples)."""
    print("$", " ".join(cmd), flush=True)
    code = run_in_process(cmd)
    if code != 0:
        raise SystemExit(f"{Path(cmd[0]).name} failed with exit code {code}")


def _one_clip_dataset(src: Path, dst: Path, copies: int, key: str | None = None):
    """Write ``copies`` copies (keys ``KEY-cN``) of one sample of latent dataset ``src`` into a
    new dataset ``dst``, so a training batch holds several noise draws of the same clip."""
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


def memorise_config(
    run: RunLayout, *, steps: int, lr: float, batch: int, preset: str, model: dict
) -> dict:
    """The ``mugv-dit train`` config: the DiT ``preset`` with ``model`` (the run's DiT model
    section with the memorisation's overrides) on the one-clip dataset, T2V only, no caption
    dropout, noise levels up to pure noise."""
    return {
        "preset": preset,
        "model": model,
        # Noise levels up to pure noise, where the sampler starts: at 64x64 x 3 latents the
        # resolution shift (r ~ 0.2) would keep training below s ~ 0.8.
        "objective": {
            "task_ratios": {"t2v": 1.0},
            "caption_dropout": 0.0,
            "shift_by_resolution": False,
            "logit_normal_mean": 1.0,
        },
        "data": {
            "path": str(run.memorise_data),
            "tokens_per_batch": 4096,
            "max_batch_size": batch,
        },
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
        "output_dir": str(run.memorise_run),
    }


def _sample(run: RunLayout, export: Path, caption: str, shape_CTHW, fps: float, steps: int):
    """``caption``'s latents of the given shape from the DiT ``export`` through mugv-infer's
    pipeline (no CFG, seed 0); returns them and the pipeline's VAE (mugv-vae's ``MUGVAE``)."""
    import torch
    from mugv_infer import MUGVPipeline

    _, t, h, w = shape_CTHW
    pipe = MUGVPipeline.from_parts(export, run.vae, run.text_encoder)
    res = pipe(
        prompt=[caption],
        negative_prompt=None,
        height=h * 8,
        width=w * 8,
        num_frames=1 + (t - 1) * 8,
        num_inference_steps=steps,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        fps=fps,
        aesthetic_score=None,
        output_type="latent",
    )
    return res.frames[0].float(), pipe.vae.to_mugv_vae()


def run_memorise(
    run: RunLayout,
    *,
    steps: int,
    lr: float,
    sample_steps: int,
    batch: int = 8,
    preset: str = "debug",
    model: dict | None = None,
) -> dict:
    """Train, export, sample the trained and an untrained DiT, compare; see the module."""
    import torch
    from mugv_dit import write_random_export
    from mugv_dit.interop.export import load_export

    run.memorise.mkdir(parents=True)  # the runner cleared it (mugv.ownership): made afresh
    pick, samples = _one_clip_dataset(run.latents_text, run.memorise_data, batch)
    rec = pick.record
    print(f"memorising {rec.key} ({rec.caption!r}), latents {pick.latents.shape}", flush=True)

    cfg = memorise_config(run, steps=steps, lr=lr, batch=batch, preset=preset, model=model or {})
    atomic_write_text(run.memorise_config, yaml.safe_dump(cfg, sort_keys=False))
    _run([script("mugv-dit"), "train", str(run.memorise_config)])
    _run([script("mugv-dit"), "export", "--run", str(run.memorise_run), "--output",
          str(run.memorise_trained), "--weights", "model"])  # fmt: skip
    model_cfg, _ = load_export(run.memorise_trained)
    write_random_export(model_cfg, run.memorise_untrained, seed=0)  # the same architecture

    target = torch.from_numpy(np.asarray(pick.latents, dtype=np.float32))
    exports = {"trained": run.memorise_trained, "untrained": run.memorise_untrained}
    gen = {}
    for name, export in exports.items():
        gen[name], vae = _sample(
            run, export, rec.caption, target.shape, float(rec.fps), sample_steps
        )
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
    write_mp4(to_uint8(recons[rec.key]), run.memorise_target)
    write_mp4(to_uint8(decoded["trained"]), run.memorise_regenerated)
    write_mp4(to_uint8(decoded["untrained"]), run.memorise_untrained_video)
    result = {
        "clip": rec.key,
        "caption": rec.caption,
        "steps": steps,
        "lr": lr,
        "sample_steps": sample_steps,
        "latent_shape": list(target.shape),
        "trained_rel_error": rel["trained"],
        "untrained_rel_error": rel["untrained"],
        "mse_to_target": mse[rec.key],
        "mse_to_others": others,
        "mse_to_nearest_other": min(others.values()) if others else None,
    }
    atomic_write_text(run.memorise_result, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2), flush=True)
    shutil.rmtree(run.memorise_run / "checkpoints", ignore_errors=True)  # the export has them
    return result


if __name__ == "__main__":
    sys.exit("run through `python -m mugv.tools memorise`")
