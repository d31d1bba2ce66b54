"""The CUDA-on-CPU shim that lets Megatron-Core's CUDA-only paths (DDP buffers, optimizer
type checks, pipeline p2p buffers and syncs) run over gloo on a CPU machine."""

from __future__ import annotations

import pytest
import torch
from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the shim is off with CUDA")


def test_cuda_requests_land_on_cpu_inside_and_fail_outside():
    with cpu_megatron() as on:
        assert on
        # what Megatron's p2p communication allocates its receive buffers with
        buf = torch.empty((3, 2), device=torch.cuda.current_device(), dtype=torch.float32)
        assert buf.device.type == "cpu"
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(2).cuda().device.type == "cpu"
        assert torch.ones(2).to("cuda:0").device.type == "cpu"
        # Megatron's DDP / optimizers check the CUDA type names of params
        assert torch.ones(2).type() == "torch.cuda.FloatTensor"
        torch.cuda.synchronize()  # no-op (p2p waits on it after batch_isend_irecv)
        with torch.cuda.stream(torch.cuda.current_stream()):
            pass
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device="cuda")
    assert torch.ones(2).type() == "torch.FloatTensor"


def test_disabled_shim_changes_nothing():
    with cpu_megatron(enabled=False) as on:
        assert not on
        assert torch.ones(2).type() == "torch.FloatTensor"
