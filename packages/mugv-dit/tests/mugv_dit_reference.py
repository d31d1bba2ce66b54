"""Independent float64 re-statement of the MUG-DiT forward, following the MUG-V release's
formulation (complex-number RoPE, modulate-then-select), evaluated on a mugv state dict.

Written without mugv_dit code so that tests compare two implementations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _lin(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _ln(x, eps, w=None, b=None):
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


def _cis(pos, head_dim, theta):
    """Complex rotations of one 1D position for each of the ``head_dim / 6`` pairs."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 6)[: head_dim // 6].double() / head_dim))
    return torch.polar(torch.ones_like(freqs), float(pos) * freqs)


def _rope_rotations(frame_index, gt, gh, gw, head_dim, theta):
    """Per sample and token, the (row, column, time) rotations of the release's rule:
    the frame index has T+2 entries; the start token sits at time fi[0], row 0, column 0;
    video token (t, h, w) at time fi[1 + t], row h, column w; the end token at time
    fi[T + 1], row H-1, column W-1. Returns ``[B, N, 1, Dh/2]`` complex."""
    rows = []
    for fi in frame_index.tolist():
        assert len(fi) == gt + 2
        places = [(0, 0, fi[0])]
        places += [(h, w, fi[1 + t]) for t in range(gt) for h in range(gh) for w in range(gw)]
        places.append((gh - 1, gw - 1, fi[gt + 1]))
        rows.append(
            torch.stack(
                [
                    torch.cat(
                        [
                            _cis(r, head_dim, theta),
                            _cis(c, head_dim, theta),
                            _cis(tt, head_dim, theta),
                        ]
                    )
                    for r, c, tt in places
                ]
            )
        )
    return torch.stack(rows)[:, :, None, :]


def _timestep(t, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def reference_forward(sd, cfg, x, sigma, texts, fps, noisy_frames, frame_index=None):
    """x [B,C,T,H,W] (float64), texts: list of [L_i, text_dim], noisy_frames [B,T] bool,
    frame_index [B, T+2] (default arange(T+2))."""
    sd = {k: v.double() for k, v in sd.items() if not k.endswith("_extra_state")}
    sigma, fps = sigma.double(), fps.double()
    eps, hd, nh = cfg.norm_eps, cfg.head_dim, cfg.num_heads
    b, c, t, h, w = x.shape
    gh, gw = h // 2, w // 2
    d = cfg.hidden_size
    # patch embed (conv 1x2x2 stride == linear over (c, 1, 2, 2) patches)
    patches = (
        x.reshape(b, c, t, gh, 2, gw, 2).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * gh * gw, -1)
    )
    xe = _lin(sd, "x_embedder", patches)

    def scalar(prefix, v):
        return _lin(sd, f"{prefix}.fc2", F.silu(_lin(sd, f"{prefix}.fc1", _timestep(v))))

    temb = scalar("t_embedder", sigma * 1000) + scalar("fps_embedder", fps)
    t0emb = scalar("t_embedder", sigma * 0) + scalar("fps_embedder", fps)
    tmod = _lin(sd, "t_block", F.silu(temb))
    t0mod = _lin(sd, "t_block", F.silu(t0emb))
    ys = []
    for y in texts:
        yy = _ln(y.double(), eps)
        yy = _lin(sd, "y_embedder.fc2", F.gelu(_lin(sd, "y_embedder.fc1", yy), approximate="tanh"))
        ys.append(_ln(yy, eps))

    seq = torch.cat([sd["start_token"].expand(b, 1, d), xe, sd["end_token"].expand(b, 1, d)], 1)
    n = seq.shape[1]
    mask = noisy_frames[:, :, None].expand(b, t, gh * gw).reshape(b, -1)
    mask = torch.cat(
        [torch.zeros(b, 1, dtype=torch.bool), mask, torch.zeros(b, 1, dtype=torch.bool)], 1
    )
    if frame_index is None:
        frame_index = torch.arange(t + 2)[None].expand(b, t + 2)
    fc = _rope_rotations(frame_index, t, gh, gw, hd, cfg.rope_theta)

    def rope(q):
        qc = torch.view_as_complex(q.reshape(*q.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(qc * fc).flatten(3)

    def sel(a, a0):
        return torch.where(mask[..., None], a, a0)

    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        tab = sd[p + "scale_shift_table"]
        m = (tab[None] + tmod.reshape(b, 6, d)).unbind(1)
        m0 = (tab[None] + t0mod.reshape(b, 6, d)).unbind(1)
        hm = sel(
            _ln(seq, eps) * (1 + m[1][:, None]) + m[0][:, None],
            _ln(seq, eps) * (1 + m0[1][:, None]) + m0[0][:, None],
        )
        qkv = _lin(sd, p + "self_attention.qkv", hm).reshape(b, n, nh, 3, hd)
        q, kk, v = qkv.unbind(3)
        q = rope(_rms(q, sd[p + "self_attention.q_norm_weight"], eps))
        kk = rope(_rms(kk, sd[p + "self_attention.k_norm_weight"], eps))
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(hd), -1)
        o = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, d)
        o = _lin(sd, p + "self_attention.proj", o)
        seq = seq + sel(m[2][:, None] * o, m0[2][:, None] * o)
        hc = _ln(seq, eps, sd[p + "cross_norm_weight"], sd[p + "cross_norm_bias"])
        outs = []
        for j in range(b):
            qj = _rms(
                _lin(sd, p + "cross_attention.q", hc[j]).reshape(n, nh, hd),
                sd[p + "cross_attention.q_norm_weight"],
                eps,
            )
            kv = _lin(sd, p + "cross_attention.kv", ys[j]).reshape(-1, nh, 2, hd)
            kj = _rms(kv[:, :, 0], sd[p + "cross_attention.k_norm_weight"], eps)
            a = torch.softmax(torch.einsum("qhd,khd->hqk", qj, kj) / math.sqrt(hd), -1)
            outs.append(torch.einsum("hqk,khd->qhd", a, kv[:, :, 1]).reshape(n, d))
        seq = seq + _lin(sd, p + "cross_attention.proj", torch.stack(outs))
        hm = sel(
            _ln(seq, eps) * (1 + m[4][:, None]) + m[3][:, None],
            _ln(seq, eps) * (1 + m0[4][:, None]) + m0[3][:, None],
        )
        o = _lin(sd, p + "mlp.fc2", F.gelu(_lin(sd, p + "mlp.fc1", hm), approximate="tanh"))
        seq = seq + sel(m[5][:, None] * o, m0[5][:, None] * o)

    xo = seq[:, 1:-1]
    mk = mask[:, 1:-1, None]
    tab = sd["final_layer.scale_shift_table"]
    sh, sc = (tab[None] + temb[:, None]).unbind(1)
    sh0, sc0 = (tab[None] + t0emb[:, None]).unbind(1)
    xo = torch.where(
        mk,
        _ln(xo, eps) * (1 + sc[:, None]) + sh[:, None],
        _ln(xo, eps) * (1 + sc0[:, None]) + sh0[:, None],
    )
    out = _lin(sd, "final_layer.linear", xo)
    co = cfg.out_channels
    out = out.reshape(b, t, gh, gw, 1, 2, 2, co).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(b, co, t, h, w)
