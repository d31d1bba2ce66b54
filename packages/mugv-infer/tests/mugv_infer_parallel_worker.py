"""One rank of a parallel generation (launched by test_parallel.py through torchrun).

usage: python -m torch.distributed.run --nproc_per_node N mugv_infer_parallel_worker.py
       MODEL VAE T5 SP CFG OUT.pt [DEVICE]   (DEVICE cpu (gloo, default) or cuda (nccl))
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    model, vae, t5 = (Path(a) for a in sys.argv[1:4])
    sp, cfg, out = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
    from mugv_infer import MUGVPipeline
    from mugv_infer.parallel import init_parallel, parallelize_pipeline

    torch.set_num_threads(1)
    groups = init_parallel(sp, cfg, backend="nccl" if device == "cuda" else "gloo")
    pipe = MUGVPipeline.from_parts(model, vae, t5)
    pipe.set_progress_bar_config(disable=True)
    if device == "cuda":
        import os

        pipe.to(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    parallelize_pipeline(pipe, groups)
    result = run(pipe)
    if groups.world > 1:
        dist.barrier()
    if groups.rank == 0:
        torch.save({k: v.cpu() for k, v in result.items()}, out)
    if groups.world > 1:
        dist.destroy_process_group()


def run(pipe) -> dict:
    """The generation every layout runs: 2 prompts of unequal length, I2V on frame 0, CFG
    with a negative prompt, 2 steps; the latents and the decoded video."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(pipe.latent_shape(2, 32, 48, 9), generator=g)
    image = torch.rand(3, 32, 48, generator=g) * 2 - 1
    kw = dict(
        prompt=["a cat", "the quick brown fox jumps over the lazy dog"],
        negative_prompt="blurry",
        image=image,
        height=32,
        width=48,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=4.0,
        latents=latents,
    )
    seen = {}

    def keep(_pipe, _i, _t, tensors):
        seen["latents"] = tensors["latents"]
        return tensors

    video = pipe(output_type="pt", callback_on_step_end=keep, **kw).frames
    return {"latents": seen["latents"], "video": video}


if __name__ == "__main__":
    main()
