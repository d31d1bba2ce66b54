"""The low-memory recipe (issue 27): ``--low-memory`` resolves to fp8 block linears, offload in
turn, a VAE tile of at most 16 latents, no CUDA graph, compile on a GPU; and a pipeline built
from it on the CPU holds exactly that."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:quantization=fp8 on cpu")


def _runtime(**kw):
    from mugv_infer.config import RuntimeConfig

    return RuntimeConfig(**kw)


def test_off_leaves_the_settings_alone():
    from mugv_infer.low_memory import low_memory_runtime

    rt = _runtime(vae_tile=32, graphed_step=True)
    assert low_memory_runtime(rt, cuda=True) is rt


@pytest.mark.parametrize(
    ("tile", "cuda", "want_tile", "want_compile"),
    [(None, True, 16, True), (32, True, 16, True), (8, False, 8, False)],
)
def test_on_sets_the_recipe_over_the_other_settings(tile, cuda, want_tile, want_compile):
    from mugv_infer.low_memory import low_memory_runtime

    rt = _runtime(low_memory=True, vae_tile=tile, graphed_step=True, quantization="none")
    got = low_memory_runtime(rt, cuda=cuda)
    assert (got.quantization, got.cpu_offload, got.graphed_step) == ("fp8", True, False)
    assert (got.vae_tile, got.compile) == (want_tile, want_compile)
    assert rt.quantization == "none" and rt.vae_tile == tile  # a copy; the input unchanged


class _FakeCuda:
    """torch.cuda's memory calls as the cap uses them, recording what it was given; like
    torch, ``set_per_process_memory_fraction`` takes a device index only."""

    def __init__(self, current=1, total=80e9):
        self.current, self.total, self.calls = current, total, []

    def current_device(self):
        return self.current

    def get_device_properties(self, index):
        assert isinstance(index, int)
        return type("Props", (), {"total_memory": self.total})()

    def set_per_process_memory_fraction(self, fraction, index):
        if not isinstance(index, int):
            raise ValueError(f"Expected a torch.device with a specified index, got {index}")
        self.calls.append((fraction, index))


@pytest.mark.parametrize(
    ("device", "cap", "want"),
    [("cuda", 24, (0.3, 1)), (torch.device("cuda"), 24, (0.3, 1)), ("cuda:0", 24, (0.3, 0)),
     ("cuda:3", 200, (1.0, 3))],
)  # fmt: skip
def test_memory_cap_names_the_device_index(monkeypatch, device, cap, want):
    from mugv_infer.low_memory import cap_gpu_memory

    fake = _FakeCuda()
    for name in ("current_device", "get_device_properties", "set_per_process_memory_fraction"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    assert cap_gpu_memory(cap, device) == pytest.approx(want[0])
    assert fake.calls == [(pytest.approx(want[0]), want[1])]


def test_memory_cap_off_cuda_and_bad_values(monkeypatch):
    from mugv_infer.low_memory import cap_gpu_memory

    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        fake.set_per_process_memory_fraction)  # fmt: skip
    assert cap_gpu_memory(24, "cpu") is None and fake.calls == []
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="memory cap"):
            cap_gpu_memory(bad, "cuda")


def test_flag_builds_a_pipeline_with_the_recipe(parts, tmp_path):
    """``generate --low-memory`` on the CPU: every block linear quantized (emulated float8,
    each layer's load-time check recorded), VAE tiling at 16 latents with overlap 4, no
    graphed runner; the resolved settings keep the switch itself (a rerun applies it again)."""
    from mugv_infer import config as C
    from mugv_infer import run
    from mugv_infer.cli import _flags, build_parser
    from mugv_infer.pipeline import MUGVPipeline
    from mugv_infer.quantize import Fp8Linear, block_linears

    args = build_parser().parse_args([
        "generate", "--model", str(parts["model"]), "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]), "--prompt", "a cat", "--resolution", "32x32",
        "--frames", "9", "--out", str(tmp_path / "v.gif"), "--low-memory",
        "--set", "runtime.dtype=float32",
    ])  # fmt: skip
    cfg = C.resolve(C.GenerateConfig, None, _flags(args), args.set)
    assert cfg.runtime.low_memory and cfg.runtime.quantization == "none"
    plan = run.check(cfg)
    pipe, _groups = run._build(cfg, plan, MUGVPipeline)
    assert block_linears(pipe.transformer) == []  # no nn.Linear left at a block-linear slot
    fp8 = [m for m in pipe.transformer.blocks.modules() if isinstance(m, Fp8Linear)]
    assert fp8 and all(m.backend == "emulated" for m in fp8)
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in fp8)
    report = pipe.fp8_report
    assert len(report.quantized) == len(fp8) and not report.kept
    assert pipe.vae_tile == (16, 4)
    assert pipe.transformer.blocks_runner is None
