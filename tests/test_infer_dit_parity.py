"""mugv-dit's export, loaded by mugv-infer, predicts the same velocity as mugv-dit's own model.

A tiny random MUGDiT (Megatron-Core layers, TP=1, CPU) is exported with mugv-dit's export
code; mugv-infer's plain-PyTorch model loads the folder and must match in float32 (relative
L2 error <= 1e-5) on random inputs with texts of unequal lengths (packed there, padded and
masked here, with garbage in the padding), a clean frame 0 and a non-default frame index
(whose start/end entries are not the neighbouring frames' times).
"""

from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mugv_dit.config import model_preset
    from mugv_dit.interop.export import full_state_dict, save_export
    from mugv_dit.model import MUGDiT, megatron_config
    from mugv_dit.parallel import init_distributed

    init_distributed(1, backend="gloo")
    cfg = model_preset("debug", num_layers=2)
    torch.manual_seed(0)
    model = MUGDiT(cfg, megatron_config(cfg)).eval()
    path = save_export(tmp_path_factory.mktemp("export") / "dit", cfg, full_state_dict(model))
    return cfg, model, path


def _inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    b, t, h, w = 2, 3, 4, 6
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=g)
    lengths = [5, 3]
    texts = [torch.randn(n, cfg.text_dim, generator=g) for n in lengths]
    sigma = torch.rand(b, generator=g)
    fps = torch.tensor([24.0, 12.0])
    noisy = torch.ones(b, t, dtype=torch.bool)
    noisy[0, 0] = False  # sample 0: frame 0 is a clean condition (I2V)
    # [B, T+2]: start / end entries differ from the neighbouring frames' times
    frame_index = torch.tensor([[3, 5, 6, 9, 12], [0, 2, 4, 6, 20]])
    padded = torch.randn(b, max(lengths), cfg.text_dim, generator=g) * 100  # garbage padding
    mask = torch.zeros(b, max(lengths), dtype=torch.bool)
    for i, tokens in enumerate(texts):
        padded[i, : len(tokens)] = tokens
        mask[i, : len(tokens)] = True
    return x, sigma, texts, padded, mask, fps, noisy, frame_index


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("default_index", [False, True])
def test_export_predicts_the_same_velocity_in_mugv_infer(exported, default_index):
    from mugv_dit.model import PackedText
    from mugv_infer.models import MUGDiTTransformer3DModel

    cfg, dit, path = exported
    ours = MUGDiTTransformer3DModel.from_export(path)
    x, sigma, texts, padded, mask, fps, noisy, frame_index = _inputs(cfg)
    fi = None if default_index else frame_index
    with torch.no_grad():
        ref = dit(
            x,
            sigma,
            PackedText.from_list(texts),
            fps_B=fps,
            noisy_frames_BT=noisy,
            frame_index_BF=fi,
        )
        out = ours(x, sigma, padded, mask, fps=fps, noisy_frames=noisy, frame_index=fi).sample
    assert out.shape == ref.shape == (2, cfg.out_channels, 3, 4, 6)
    assert _rel(out, ref) <= 1e-5, _rel(out, ref)
    # the velocity (first half of the channels) on its own, too
    c = cfg.in_channels
    assert _rel(out[:, :c], ref[:, :c]) <= 1e-5


def test_start_end_entries_of_the_frame_index_matter_in_both(exported):
    """Moving only the start/end entries changes both models' predictions the same way."""
    from mugv_dit.model import PackedText
    from mugv_infer.models import MUGDiTTransformer3DModel

    cfg, dit, path = exported
    ours = MUGDiTTransformer3DModel.from_export(path)
    x, sigma, texts, padded, mask, fps, noisy, frame_index = _inputs(cfg, seed=2)
    moved = frame_index.clone()
    moved[:, 0] += 1
    moved[:, -1] -= 1
    with torch.no_grad():
        a = ours(x, sigma, padded, mask, fps=fps, noisy_frames=noisy, frame_index=frame_index)
        b = ours(x, sigma, padded, mask, fps=fps, noisy_frames=noisy, frame_index=moved)
        ref_b = dit(
            x,
            sigma,
            PackedText.from_list(texts),
            fps_B=fps,
            noisy_frames_BT=noisy,
            frame_index_BF=moved,
        )
    assert (a.sample - b.sample).abs().amax() > 1e-6
    assert _rel(b.sample, ref_b) <= 1e-5
