"""3D RoPE tables: the MUG-V frequency layout, token order, and the relative-position property."""

from __future__ import annotations

import mugv_kernels as mk
import pytest
import torch

from .conftest import rel_err


def test_default_split_of_head_dim_72_is_three_equal_parts():
    assert mk.default_split(72) == (24, 24, 24)
    with pytest.raises(ValueError, match="explicit split"):
        mk.default_split(64)


def test_tables_follow_the_release_frequency_layout():
    """Release: freqs_j = theta^(-6j/Dh), j < Dh/6, concatenated as [height, width, time]."""
    t, h, w, dh = 3, 4, 5, 72
    cos, sin = mk.rope3d_frequencies((t, h, w), dh)
    assert cos.shape == sin.shape == (t * h * w, dh // 2)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dh, 6)[: dh // 6].double() / dh))
    for tok, (ti, hi, wi) in enumerate(
        (a, b, c) for a in range(t) for b in range(h) for c in range(w)
    ):
        ang = torch.cat((hi * freqs, wi * freqs, ti * freqs))
        assert torch.allclose(cos[tok].double(), ang.cos(), atol=1e-6)
        assert torch.allclose(sin[tok].double(), ang.sin(), atol=1e-6)


def test_explicit_split_and_frame_positions():
    cos, sin = mk.rope3d_frequencies(
        (2, 1, 3), 16, split=(4, 4, 8), frame_positions=torch.tensor([0.0, 7.0]), theta=100.0
    )
    # token (t=1, h=0, w=2): time part has 4 pairs with angle 7 * 100^(-2j/8)
    tok = 1 * 3 + 2
    j = torch.arange(4, dtype=torch.float64)
    ang_t = 7.0 * 100.0 ** (-2 * j / 8)
    assert torch.allclose(cos[tok, 4:].double(), ang_t.cos(), atol=1e-6)
    ang_w = 2.0 * 100.0 ** (-2 * torch.arange(2, dtype=torch.float64) / 4)
    assert torch.allclose(sin[tok, 2:4].double(), ang_w.sin(), atol=1e-6)
    assert torch.equal(cos[tok, :2], torch.ones(2))  # height 0: no rotation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": (24, 24, 22)}, "summing"),
        ({"split": (23, 25, 24)}, "even"),
        ({"frame_positions": torch.arange(5.0)}, "frame_positions"),
    ],
)
def test_bad_rope_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mk.rope3d_frequencies((3, 2, 2), 72, **kwargs)


def test_scores_depend_only_on_relative_position(gen):
    """<rope(q, p1), rope(k, p2)> is unchanged when both positions shift by the same offset."""
    t, h, w, dh = 4, 3, 3, 24
    cos, sin = mk.rope3d_frequencies((t, h, w), dh)
    q = torch.randn(1, 1, 1, dh, generator=gen, dtype=torch.float64).expand(1, t * h * w, 1, dh)
    k = torch.randn(1, 1, 1, dh, generator=gen, dtype=torch.float64).expand(1, t * h * w, 1, dh)
    ones = torch.ones(dh, dtype=torch.float64)
    q_r, k_r = mk.qk_rmsnorm_rope3d(q, k, ones, ones, cos.double(), sin.double())

    def index(ti, hi, wi):
        return (ti * h + hi) * w + wi

    def score(a, b):
        return float((q_r[0, index(*a), 0] * k_r[0, index(*b), 0]).sum())

    base = score((0, 0, 0), (1, 2, 1))
    shifted = score((2, 0, 1), (3, 2, 2))  # same offset (1, 2, 1)
    assert abs(base - shifted) < 1e-4 * max(1.0, abs(base))
    assert rel_err(torch.tensor(base), torch.tensor(score((0, 0, 0), (0, 0, 0)))) > 1e-3


def test_dit_tables_place_start_end_tokens_and_clamp_the_frame_index_as_the_release():
    """Closed form from the release's description: each third of the head dim is one axis
    (row, column, time) whose pair j turns by pos * theta^(-6 j / Dh); the start token sits at
    (row 0, column 0, time fi[0]), video token (t, h, w) at (h, w, fi[1 + t]), the end token at
    (H - 1, W - 1, fi[T + 1]); times are clamped to [0, 479] (a 480-entry time table)."""
    from mugv_kernels.rope import MAX_FRAME_INDEX, default_frame_index, dit_rope_tables

    t, h, w, dh, theta = 2, 3, 4, 12, 50.0
    fi_BF = torch.tensor([[5, 1, 7, 9], [0, 3, 700, -4]])
    cos, sin = dit_rope_tables((t, h, w), dh, fi_BF, theta=theta, dtype=torch.float64)
    inv = theta ** (-6.0 * torch.arange(dh // 6, dtype=torch.float64) / dh)

    def expect(row, col, time):
        ang = torch.cat((row * inv, col * inv, time * inv))
        return ang.cos(), ang.sin()

    token = 1 + (1 * h + 2) * w + 3  # video token (t=1, h=2, w=3)
    cases = {
        (0, 0): (0, 0, 5),
        (0, -1): (h - 1, w - 1, 9),
        (0, token): (2, 3, 7),
        (1, token): (2, 3, MAX_FRAME_INDEX),  # 700 clamped
        (1, -1): (h - 1, w - 1, 0),  # -4 clamped
    }
    assert cos.shape == sin.shape == (2, t * h * w + 2, dh // 2)
    for (b, n), position in cases.items():
        c, s = expect(*position)
        torch.testing.assert_close(cos[b, n], c, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(sin[b, n], s, rtol=1e-15, atol=1e-15)
    assert MAX_FRAME_INDEX == 479
    assert default_frame_index(2, 3).tolist() == [[0, 1, 2, 3, 4]] * 2
    with pytest.raises(ValueError, match=r"\[B, T\+2\]"):
        dit_rope_tables((t, h, w), dh, torch.zeros(1, 3))


def test_apply_rope_interleaved_rotates_channel_pairs():
    from mugv_kernels.rope import apply_rope_interleaved

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 1, 4, generator=g, dtype=torch.float64)
    ang = torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
    out = apply_rope_interleaved(x, ang.cos(), ang.sin())
    z = (
        torch.complex(x[..., 0::2], x[..., 1::2])
        * torch.polar(torch.ones_like(ang), ang)[:, :, None]
    )
    torch.testing.assert_close(out[..., 0::2], z.real)
    torch.testing.assert_close(out[..., 1::2], z.imag)
