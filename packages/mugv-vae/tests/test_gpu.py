"""CUDA checks (opt-in: ``pytest -m gpu``): fused GroupNorm+SiLU parity, bf16 training step."""

from __future__ import annotations

import pytest
import torch
from mugv_vae.config import VAERuntime, tiny_config
from mugv_vae.model import MUGVAE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_fused_group_norm_silu_matches_torch_on_cuda(make_video, monkeypatch):
    # TF32 convolutions (cuDNN's default) would dominate the difference being measured.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    plain = MUGVAE(tiny_config()).cuda().eval()
    fused = MUGVAE(tiny_config(), VAERuntime(fused_group_norm_silu=True)).cuda().eval()
    fused.load_state_dict(plain.state_dict())
    video = make_video(t=17, h=64, w=64).cuda()
    with torch.no_grad():
        torch.testing.assert_close(fused.encode(video), plain.encode(video), rtol=1e-3, atol=1e-3)
        z = plain.encode(video)
        torch.testing.assert_close(fused.decode(z), plain.decode(z), rtol=1e-3, atol=1e-3)


def test_bf16_autocast_training_step_is_finite(make_video):
    torch.manual_seed(0)
    model = MUGVAE(tiny_config()).cuda().train()
    video = make_video(b=2, t=9, h=64, w=64).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        recon, post = model(video, window=1)
        loss = (recon.float() - video).pow(2).mean() + 1e-6 * post.kl().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_channels_last_fused_path_matches_plain_on_cuda(make_video, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    plain = MUGVAE(tiny_config()).cuda().eval()
    fast_rt = VAERuntime(fused_group_norm_silu=True, channels_last=True, max_activation_bytes=1)
    fast = MUGVAE(tiny_config(), fast_rt).cuda().eval()
    fast.load_state_dict(plain.state_dict())
    video = make_video(t=17, h=64, w=64).cuda()
    with torch.no_grad():
        z = plain.encode(video)
        torch.testing.assert_close(fast.encode(video), z, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(
            fast.decode(z, window=1), plain.decode(z, window=1), rtol=1e-3, atol=1e-3
        )


def test_nhwc_kernels_and_folded_upsampling_match_plain_on_cuda(make_video, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    from mugv_vae.model import nhwc_ops

    torch.manual_seed(0)
    plain = MUGVAE(tiny_config()).cuda().eval()
    update = {"channels_last": True, "fused_nhwc_ops": True, "fold_upsample_conv": True}
    fast = MUGVAE(tiny_config(), VAERuntime(**update)).cuda().eval()
    fast.load_state_dict(plain.state_dict())
    video = make_video(t=17, h=64, w=96).cuda()
    x = torch.randn(2, 16, 9, 12, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert nhwc_ops.kernels_apply(x, 4)
        z = plain.encode(video)
        torch.testing.assert_close(fast.encode(video), z, rtol=1e-3, atol=1e-3)
        for window in (1, 8):
            torch.testing.assert_close(
                fast.decode(z, window=window), plain.decode(z, window=window), rtol=1e-3, atol=1e-3
            )


def test_chunked_wide_head_attention_matches_sdpa_on_cuda():
    from mugv_vae.model import nhwc_ops

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(3, 1, 1000, 512, generator=g, device="cuda").to(torch.bfloat16)
        for _ in range(3)
    )
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    out = nhwc_ops.chunked_attention(q, k, v)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    err = (out.double() - ref).norm() / ref.norm()
    err_sdpa = (sdpa.double() - ref).norm() / ref.norm()
    assert err < 1e-2 and err < 2 * err_sdpa + 1e-3, (err, err_sdpa)
