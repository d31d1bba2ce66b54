"""Worker of test_ema_masters.py's two-rank gloo test, in a module of its own: a spawned child
imports its target by module name, which a test file collected by path does not have."""

from __future__ import annotations

import os

import torch


def sync_worker(rank: int, world: int, port: int, path: str) -> None:
    import torch.distributed as dist
    from mugv_dit.optim.master import MasterParam, lerp_to_masters_, sync_sharded_

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        ema = [torch.randn(5, 7, generator=g), torch.randn(11, generator=g)]
        master = [torch.randn(5, 7, generator=g), torch.randn(11, generator=g)]
        # rank r holds the flat elements [cut_r, cut_{r+1}) of each parameter (one empty)
        cuts = [(0, 20, 35), (0, 0, 11)]
        masters = []
        for full, (a, b, c) in zip(master, cuts, strict=True):
            lo, hi = ((a, b), (b, c))[rank]
            masters.append(MasterParam(full.view(-1)[lo:hi].clone(), lo, hi, dist.group.WORLD))
        pending = {}
        for _ in range(3):
            lerp_to_masters_(ema, masters, 0.25, pending)
        assert sorted(pending) == [0, 1]
        sync_sharded_(ema, pending)
        assert pending == {}
        torch.save([e.clone() for e in ema], f"{path}.{rank}")
    finally:
        dist.destroy_process_group()
