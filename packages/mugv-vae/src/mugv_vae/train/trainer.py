"""VAE trainer: one GPU to many (torchrun; DDP or FSDP2), CPU for tests.

State declared up front: ``step``; everything else (model, EMA, optimisers, discriminator)
checkpoints itself. A training checkpoint is a folder ``<output>/checkpoints/step_NNNNNNN``
(``step-NNNNNNN`` of older runs still resumes)
written under a temporary name and renamed (so it is complete or absent), holding
``trainer.pt`` (full, unsharded states) and ``vae/`` (the EMA weights as a VAE checkpoint).
Batches depend only on ``(seed, step, rank)`` and the posterior noise on a generator seeded
the same way, so resuming reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import time
import warnings
from pathlib import Path

import mugv_formats as mf
import torch
from mugv_formats.atomic import open_append_nofollow
from mugv_formats.checkpoint_dirs import prune_step_dirs, step_dir_name, step_dirs
from mugv_formats.config_loading import dump_config
from mugv_formats.outputs import claim_output, output_lock
from tqdm import tqdm

from mugv_vae.config import VAERuntime, preset, with_architecture
from mugv_vae.distributed import init_distributed
from mugv_vae.metrics import psnr
from mugv_vae.model import MUGVAE
from mugv_vae.train import losses as L
from mugv_vae.train.config import TrainConfig
from mugv_vae.train.data import ClipSource, StepBatches
from mugv_vae.train.discriminator import PatchDiscriminator3D
from mugv_vae.train.ema import EMA
from mugv_vae.train.parallelize import apply_ddp, apply_fsdp2
from mugv_vae.video import parse_resolution

RUN_KIND = "mugv.vae-train-run"
#: Temporary names of a checkpoint write (atomic_replace_dir) or removal (prune_step_dirs).
_OUR_TEMP = re.compile(
    r"\A(\.step[_-]\d+\.\w+\.tmp|\.step[_-]\d+\.old-\d+|\.deleting-step[_-]\d+-\d+)\Z"
)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full tensor from a plain tensor or an FSDP2 DTensor (collective for DTensor)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach()


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.step = 0
        # 1. processes and device
        self.rank, self.world, local_rank = init_distributed()
        if cfg.device:
            self.device = torch.device(cfg.device)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        use_bf16 = cfg.precision == "bfloat16" or (
            cfg.precision == "auto" and self.device.type == "cuda"
        )
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
        self.output = Path(cfg.output)
        torch.manual_seed(cfg.seed)
        # 2. model on the device, then parallelism (from outside the model)
        self.model = self._build_model().to(self.device).train()
        parallel = cfg.parallel
        if parallel == "auto":
            parallel = "ddp" if self.world > 1 else "none"
        if parallel != "none" and self.world == 1 and parallel == "ddp":
            parallel = "none"
        self.parallel = parallel
        if parallel == "fsdp2":
            self.forward_model = apply_fsdp2(self.model)
        elif parallel == "ddp":
            self.forward_model = apply_ddp(self.model, self.device)
        else:
            self.forward_model = self.model
        # 3. EMA over the (possibly sharded) parameters; optimiser
        self.ema = EMA.of(self.model, cfg.ema_decay)
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay
        )
        # 4. losses: LPIPS (optional, local weights), discriminator (GAN stage)
        self.lpips = None
        if cfg.loss.perceptual > 0:
            if cfg.loss.lpips_weights and Path(cfg.loss.lpips_weights).is_file():
                from mugv_vae.train.lpips import LPIPS

                self.lpips = LPIPS.from_file(cfg.loss.lpips_weights).to(self.device)
            else:
                warnings.warn(
                    f"perceptual loss skipped: LPIPS weights not found "
                    f"(loss.lpips_weights={cfg.loss.lpips_weights!r})",
                    stacklevel=2,
                )
        self.disc = self.disc_opt = self.disc_fwd = None
        if cfg.loss.gan_start_step is not None:
            self.disc = PatchDiscriminator3D(cfg.loss.disc_channels).to(self.device).train()
            self.disc_fwd = apply_ddp(self.disc, self.device) if self.world > 1 else self.disc
            self.disc_opt = torch.optim.AdamW(
                self.disc.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.9)
            )
        # 5. data
        self.batches = StepBatches(
            ClipSource(cfg.data.clips, cache_decoded=cfg.data.cache_decoded),
            cfg.data.resolution,
            cfg.data.frames,
            cfg.data.batch_size,
            cfg.data.image_ratio,
            cfg.data.decoder_windows,
            cfg.seed,
            self.rank,
            cfg.steps,
            max_offset=cfg.data.max_offset,
            distinct_clips=cfg.data.distinct_clips,
        )
        self.eval_source = ClipSource(cfg.data.eval_clips) if cfg.data.eval_clips else None
        self.writer = None
        self._ema_model: MUGVAE | None = None

    # ------------------------------------------------------------------ building
    def _build_model(self) -> MUGVAE:
        m = self.cfg.model
        runtime = VAERuntime(
            fused_group_norm_silu=m.fused_group_norm_silu,
            gradient_checkpointing=m.gradient_checkpointing,
        )
        if m.checkpoint:
            model = MUGVAE.from_pretrained(m.checkpoint, runtime=runtime)
        else:
            model = MUGVAE(with_architecture(preset(m.preset or "tiny"), m.architecture), runtime)
            if m.sdxl_vae:
                model.trunk.load_autoencoder_kl(m.sdxl_vae)
        if m.freeze_trunk:
            model.trunk.requires_grad_(False)
        return model

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dirs(self) -> list[Path]:
        return step_dirs(self.output / "checkpoints", lambda p: (p / "trainer.pt").is_file())

    def _model_state(self) -> dict[str, torch.Tensor]:
        return {k: _full(v).cpu() for k, v in self.model.state_dict().items()}

    def _optim_state(self) -> dict:
        if self.parallel == "fsdp2":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        return self.optimizer.state_dict()

    def ema_model(self) -> MUGVAE:
        """A plain (unsharded) model on the device holding the EMA weights (collective under
        FSDP2). Built once, refreshed on every call."""
        state = {k: _full(v) for k, v in self.model.state_dict().items()}
        state.update({k: _full(v) for k, v in self.ema.shadow.items()})
        if self._ema_model is None:
            with torch.device(self.device):
                self._ema_model = MUGVAE(self.model.config).eval()
        self._ema_model.load_state_dict(state)
        return self._ema_model

    def save(self, final: bool = False) -> Path | None:
        state = {
            "step": self.step,
            "model": self._model_state(),
            "ema": {
                "decay": self.ema.decay,
                "shadow": {k: _full(v).cpu() for k, v in self.ema.shadow.items()},
            },
            "optimizer": self._optim_state(),
            "config": self.cfg.model_dump(mode="json"),
        }
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_optimizer"] = self.disc_opt.state_dict()
        ema_model = self.ema_model()
        if self.rank != 0:
            return None
        path = self.output / "checkpoints" / step_dir_name(self.step)
        with mf.atomic_replace_dir(path) as tmp:
            torch.save(state, tmp / "trainer.pt")
            ema_model.save_pretrained(tmp / "vae", extra={"train_step": self.step})
            if final and self.cfg.latent_stats is not None:
                self._write_latent_stats(tmp / "vae")
        prune_step_dirs(
            path.parent,
            self.cfg.keep_checkpoints,
            protect={path.name},
            complete=lambda p: (p / "trainer.pt").is_file(),
        )
        return path

    def _write_latent_stats(self, vae_dir: Path) -> None:
        """The final checkpoint's latent mean/std (``mugv-vae stats --write`` in-process),
        written inside the checkpoint's atomic folder: a killed run leaves no half-measured
        checkpoint."""
        from mugv_vae.stats import measure_latent_stats

        st = self.cfg.latent_stats
        result = measure_latent_stats(
            str(vae_dir),
            self.cfg.data.clips,
            resolution=st.resolution,
            frames=st.frames,
            device=str(self.device),
            max_clips=st.max_clips,
            write=True,
        )
        result.pop("checkpoint_id", None)  # of the temporary folder
        mf.atomic_write_text(vae_dir.parent / "latent_stats.json", json.dumps(result, indent=2))

    def resume(self) -> bool:
        """Load the latest complete training checkpoint of ``output``, if any."""
        dirs = self._checkpoint_dirs()
        if not dirs:
            return False
        state = torch.load(dirs[-1] / "trainer.pt", map_location="cpu", weights_only=True)
        if self.parallel == "fsdp2":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )
            from torch.distributed.tensor import distribute_tensor

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, state["model"], options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=opts)
            params = dict(self.model.named_parameters())
            shadow = {
                k: distribute_tensor(v.to(self.device), params[k].device_mesh, params[k].placements)
                for k, v in state["ema"]["shadow"].items()
            }
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            shadow = {k: v.to(self.device) for k, v in state["ema"]["shadow"].items()}
        self.ema.decay, self.ema.shadow = state["ema"]["decay"], shadow
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])
        return True

    # ------------------------------------------------------------------ training
    def _lr(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then constant or a cosine decay that reaches
        ``min_lr`` at the last step."""
        o = self.cfg.optim
        if o.warmup_steps and step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        if o.lr_decay == "constant":
            return o.lr
        span = max(1, self.cfg.steps - 1 - o.warmup_steps)
        progress = min(1.0, max(0, step - o.warmup_steps) / span)
        return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    def train_step(self, batch: dict) -> dict[str, float]:
        cfg, lw = self.cfg, self.cfg.loss
        video = batch["video"].to(self.device, non_blocking=True)
        gen = torch.Generator(device=self.device).manual_seed(
            (cfg.seed * 1_000_003 + self.step * 7919 + self.rank) % (2**62)
        )
        gan_on = self.disc is not None and self.step >= lw.gan_start_step
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        with self._autocast():
            recon, posterior = self.forward_model(
                video, window=batch["window"], sample=lw.sample_posterior, generator=gen
            )
            rec = L.reconstruction_losses(recon, video, lw.adaptive_l1)
            kl = L.kl_loss(posterior)
            loss = lw.mse * rec["mse"] + lw.l1 * rec["l1"] + lw.kl * kl
            logs = {"mse": rec["mse"], "l1": rec["l1"], "kl": kl}
            if self.lpips is not None:
                from mugv_vae.train.lpips import lpips_distance

                p = lpips_distance(self.lpips, recon.float(), video.float())
                loss = loss + lw.perceptual * p
                logs["lpips"] = p
            if gan_on:
                g = L.hinge_g_loss(self.disc_fwd(recon))
                loss = loss + lw.gan * g
                logs["gan_g"] = g
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], cfg.optim.grad_clip
        )
        self.optimizer.step()
        self.ema.update(self.model)
        if gan_on:
            with self._autocast():
                d = L.hinge_d_loss(self.disc_fwd(video), self.disc_fwd(recon.detach()))
            self.disc_opt.zero_grad(set_to_none=True)
            d.backward()
            self.disc_opt.step()
            logs["gan_d"] = d
        logs.update(loss=loss, grad_norm=grad_norm, psnr=psnr(recon.detach().float(), video))
        self._last = (video, recon.detach())
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in logs.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """PSNR of the EMA weights on the held-out clips (rank 0; collective gather)."""
        if self.eval_source is None:
            return None
        model = self.ema_model()
        if self.rank != 0:
            return None
        size = [parse_resolution(self.cfg.data.resolution)]
        scores = []
        for i in range(len(self.eval_source)):
            x = self.eval_source.load(i, self.cfg.data.frames, size).unsqueeze(0)
            x = x.to(self.device)
            with self._autocast():
                y = model.decode_raw(model.encode_raw(x), window=8)
            scores.append(float(psnr(y.float(), x)))
        return {"eval_psnr": sum(scores) / len(scores)}

    def _log(self, logs: dict[str, float]) -> None:
        if self.rank != 0:
            return
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.output / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "tensorboard not installed: logging to metrics.jsonl only", stacklevel=2
                )
                self.writer = False
        for k, v in logs.items():
            if self.writer:
                self.writer.add_scalar(f"train/{k}", v, self.step)
        with open_append_nofollow(self.output / "metrics.jsonl") as f:
            f.write(json.dumps({"step": self.step, **logs}) + "\n")

    def _log_images(self) -> None:
        if self.rank != 0 or not self.writer:
            return
        video, recon = self._last
        t = video.shape[2] // 2
        side = torch.cat([video[0, :, t], recon[0, :, t].float()], dim=-1)  # [3, H, 2W]
        self.writer.add_image("recon/input_vs_output", ((side + 1) / 2).clamp(0, 1), self.step)

    def _out_of_time(self, t0: float) -> bool:
        """True once ``max_seconds`` passed on any rank (all ranks agree, no deadlock)."""
        flag = torch.tensor(
            [float(time.perf_counter() - t0 > self.cfg.max_seconds)], device=self.device
        )
        if self.world > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def claim_output(self) -> None:
        """Rank 0: the run folder must be new, empty or a VAE run of ours (never a user's
        folder, a dataset or a checkpoint, never the training data); a run there now is
        refused by the lock (held until :meth:`run` returns)."""
        m = self.cfg.model
        inputs = [self.cfg.data.clips, self.cfg.data.eval_clips, m.checkpoint, m.sdxl_vae]
        claim_output(self.output, RUN_KIND, inputs=inputs, what="run folder (output)")

    def _clean_after_kill(self) -> None:
        """Remove what a killed checkpoint write left: only our own temporary names."""
        ckpts = self.output / "checkpoints"
        if not ckpts.is_dir():
            return
        for p in ckpts.iterdir():
            if _OUR_TEMP.match(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)

    def _truncate_metrics(self) -> None:
        """Keep the metrics rows up to the resumed step (a killed run logged past its last
        checkpoint; those steps are trained again and logged again). Atomic."""
        path = self.output / "metrics.jsonl"
        if path.is_symlink() or not path.is_file():
            return
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by the kill
            step = row.get("step") if isinstance(row, dict) else None
            if isinstance(step, int) and step <= self.step:
                kept.append(line)
        mf.atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def run(self) -> dict:
        """Train to ``cfg.steps`` (resuming the latest checkpoint); the run's config is
        written first to ``<output>/resolved_config.yaml``. Rank 0 claims and locks the run
        folder for the run (mugv_formats.outputs)."""
        with contextlib.ExitStack() as stack:
            if self.rank == 0:
                self.claim_output()
                stack.enter_context(output_lock(self.output, "run folder (output)"))
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            self._clean_after_kill()
            mf.atomic_write_text(self.output / "resolved_config.yaml", dump_config(cfg))
        resumed = self.resume()
        if self.rank == 0 and resumed:
            self._truncate_metrics()
        start, t0 = self.step, time.perf_counter()
        steps = range(self.step, cfg.steps)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.batches, list(steps)),
            batch_size=None,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        last: dict[str, float] = {}
        bar = tqdm(loader, total=len(steps), disable=self.rank != 0, desc="train", mininterval=10)
        for batch in bar:
            last = self.train_step(batch)
            if not all(math.isfinite(v) for v in last.values()):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {last}")
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log({**last, "lr": self._lr(self.step - 1)})
            if cfg.image_every and self.step % cfg.image_every == 0:
                self._log_images()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                ev = self.evaluate()
                if ev:
                    self._log(ev)
            if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save()
            if cfg.max_seconds is not None and self._out_of_time(t0):
                break

        final = None
        if cfg.save_final:
            final = (
                self.save(final=True)
                if self.step > start or not resumed
                else self._checkpoint_dirs()[-1]
            )
        if self.writer:
            self.writer.close()
        return {
            "steps": self.step,
            "resumed_from": start if resumed else None,
            "seconds": round(time.perf_counter() - t0, 2),
            "last": last,
            "checkpoint": str(final) if final else None,
        }

    fit = run  # the name before mugv-vae 0.x aligned with mugv-dit's Trainer.run
