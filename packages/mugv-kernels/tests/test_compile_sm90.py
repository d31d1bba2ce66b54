"""Every Triton kernel compiles for Hopper (sm_90) on this CPU-only machine.

The CPU interpreter runs kernels as Python and misses compile-time errors (e.g. a helper whose
branches return different shapes). Here each kernel is lowered to a cubin with triton's own
ptxas for a GPU that is not present, at the real DiT/VAE shapes.
"""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
from mugv_kernels import _triton_groupnorm as G  # noqa: E402
from mugv_kernels import _triton_groupnorm_cl as GCL  # noqa: E402
from mugv_kernels import _triton_groupnorm_coop as GCO  # noqa: E402
from mugv_kernels import _triton_modnorm as M  # noqa: E402
from mugv_kernels import _triton_qkrope as Q  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

_PTR = {"bf16": "*bf16", "fp32": "*fp32", "u8": "*u8", "i32": "*i32"}


def _compile(kernel, args: dict, num_warps: int, num_stages: int = 3):
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = args[name]
        if kernel.params[i].is_constexpr:
            sig[name], consts[name] = "constexpr", value
        elif isinstance(value, str):
            sig[name], attrs[(i,)] = _PTR[value], [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif value == 1 and isinstance(value, int):  # the JIT specialises ints equal to 1
            sig[name], consts[name] = "constexpr", 1
        elif isinstance(value, int):
            sig[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32"
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    assert compiled.asm["cubin"]
    return compiled


L, D, H, DH = 50400, 3456, 48, 72


def _mod(mode):
    return {0: (D, 0, 0, 1), 1: (L * D, D, 0, 1), 2: (2 * D, 0, D, 1)}[mode]


def _rows(*prefixes):
    out = {}
    for p in prefixes:
        out.update({f"{p}_n": L * D, f"{p}_l": D, f"{p}_d": 1})
    return out


def _mods(*prefixes, mode):
    out = {}
    for p in prefixes:
        sn, sl, sb, sd = _mod(mode)
        out.update({f"{p}_n": sn, f"{p}_l": sl, f"{p}_b": sb, f"{p}_d": sd})
    return out


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_modulated_norm_kernels_compile(mode):
    common = {"L": L, "D": D, "rows_per_prog": 96, "sbr_n": L, "sbr_l": 2, "MODE": mode}
    common |= {"BLOCK_D": 4096}
    ptr = dict.fromkeys(("x_ptr", "out_ptr", "shift_ptr", "scale_ptr"), "bf16")
    stats = {"br_ptr": "u8", "mean_ptr": "fp32", "rstd_ptr": "fp32"}
    _compile(
        M.modln_fwd_kernel,
        {**ptr, **stats, **common, **_rows("sx", "so"), **_mods("ssh", "ssc", mode=mode),
         "eps": 1e-6, "BLOCK_R": 2},
        16,
    )  # fmt: skip
    _compile(
        M.modln_bwd_kernel,
        {"dout_ptr": "bf16", "x_ptr": "bf16", "scale_ptr": "bf16", **stats, "dx_ptr": "bf16",
         "dshift_ptr": "fp32", "dscale_ptr": "fp32", **common, "P": 525,
         **_rows("sdo", "sx", "sdx"), **_mods("ssc", mode=mode), "BLOCK_R": 1},
        16,
    )  # fmt: skip
    gptr = dict.fromkeys(
        ("x_ptr", "y_ptr", "bias_ptr", "gate_ptr", "shift_ptr", "scale_ptr"), "bf16"
    )
    _compile(
        M.gated_fwd_kernel,
        {**gptr, **stats, "h_ptr": "bf16", "hn_ptr": "bf16", **common, "eps": 1e-6,
         **_rows("sx", "sy"), **_mods("sg", "ssh", "ssc", mode=mode), "HAS_BIAS": True,
         "BLOCK_R": 2},
        16,
    )  # fmt: skip
    bptr = dict.fromkeys(("dh_ptr", "dhn_ptr", "h_ptr", "y_ptr", "bias_ptr", "gate_ptr"), "bf16")
    gout = dict.fromkeys(("dgate_ptr", "dshift_ptr", "dscale_ptr", "dbias_ptr"), "fp32")
    _compile(
        M.gated_bwd_kernel,
        {**bptr, "scale_ptr": "bf16", **stats, "dx_ptr": "bf16", "dy_ptr": "bf16", **gout,
         **common, "P": 525, **_rows("sdh", "sdn", "sy"), **_mods("sg", "ssc", mode=mode),
         "HAS_BIAS": True, "HAS_DH": True, "BLOCK_R": 1},
        16,
    )  # fmt: skip


@pytest.mark.parametrize(("heads", "bh", "bt", "dw_red"), [(24, 8, 4, False), (48, 16, 2, True)])
def test_qk_rope_kernels_compile(heads, bh, bt, dw_red):
    def st(p, h):
        return {f"s{p}_b": L * h * DH, f"s{p}_l": h * DH, f"s{p}_h": DH, f"s{p}_d": 1}

    tables = {"sc_b": 0, "sc_l": 36, "sc_p": 1, "ss_b": L * 36, "ss_l": 36, "ss_p": 1}
    meta = {"HQ": heads, "HK": heads, "BHQ": bh, "BHK": bh, "DH": DH, "D1": 64, "D1V": 64, "D2": 8}
    meta |= {"Q_ALIGN": 8, "K_ALIGN": 8, "T_ALIGN": 4}
    ptrs = {"q_ptr": "bf16", "k_ptr": "bf16", "qw_ptr": "bf16", "kw_ptr": "bf16"}
    ptrs |= {"cos_ptr": "fp32", "sin_ptr": "fp32"}
    sizes = {"NT": L, "L": L, "tokens_per_prog": 48, "eps": 1e-6}
    _compile(
        Q.qk_fwd_kernel,
        {**ptrs, "qo_ptr": "bf16", "ko_ptr": "bf16", **sizes, **st("q", heads),
         **st("k", heads), **tables, **meta, "BT": bt},
        8,
    )  # fmt: skip
    _compile(
        Q.qk_bwd_kernel,
        {**ptrs, "dqo_ptr": "bf16", "dko_ptr": "bf16", "dq_ptr": "bf16", "dk_ptr": "bf16",
         "dw_ptr": "fp32", **sizes, **st("dq", heads), **st("dk", heads), **st("q", heads),
         **st("k", heads), **tables, **meta, "DQ_ALIGN": 8, "DK_ALIGN": 8, "DO_Q": True,
         "DO_K": True, "P2": 4, "DW_RED": dw_red, "BT": bt // 2},
        8,
    )  # fmt: skip


def test_group_norm_kernels_compile():
    s = 65536
    xwb = {"x_ptr": "bf16", "w_ptr": "bf16", "b_ptr": "bf16"}
    stats = {"mean_ptr": "fp32", "rstd_ptr": "fp32"}
    geo = {"C": 128, "S": s, "channels_per_group": 4, "BLOCK": 4096}
    _compile(
        G.gn_stats_kernel,
        {"x_ptr": "bf16", "mean_ptr": "fp32", "m2_ptr": "fp32", "S": s, "num_chunks": 16,
         "BLOCK": 4096},
        8,
    )  # fmt: skip
    _compile(
        G.gn_combine_kernel,
        {"mean_c_ptr": "fp32", "m2_c_ptr": "fp32", **stats, "S": s, "num_chunks": 16,
         "per_group": 64, "eps": 1e-6, "BLOCK": 4096, "CHUNK_BLOCK": 64},
        4,
    )  # fmt: skip
    _compile(G.gn_apply_kernel, {**xwb, "out_ptr": "bf16", **stats, **geo}, 8)
    sums = {"sum_dz_ptr": "fp32", "sum_dz_xhat_ptr": "fp32"}
    _compile(
        G.gn_bwd_reduce_kernel, {"dout_ptr": "bf16", **xwb, **stats, **sums, **geo,
                                 "num_chunks": 16}, 8
    )  # fmt: skip
    _compile(
        G.gn_bwd_dx_kernel,
        {"dout_ptr": "bf16", **xwb, "dx_ptr": "bf16", **stats, "m1_ptr": "fp32",
         "m2_ptr": "fp32", **geo},
        8,
    )  # fmt: skip
    _compile(
        G.gn_bwd_group_sums_kernel,
        {"sum_dz_ptr": "fp32", "sum_dzx_ptr": "fp32", "w_ptr": "bf16", "a_ptr": "fp32", "b_ptr": "fp32", "m1_ptr": "fp32",
         "m2_ptr": "fp32", "C": 128, "cpg": 4, "num_chunks": 16, "count": 262144.0,
         "CPG_BLOCK": 4, "CHUNK_BLOCK": 16},
        4,
    )  # fmt: skip
    _compile(G.gn_group_fwd_kernel, {**xwb, "out_ptr": "bf16", **stats, **geo, "eps": 1e-6}, 8)
    _compile(
        G.gn_group_bwd_kernel,
        {"dout_ptr": "bf16", **xwb, "dx_ptr": "bf16", **stats, **sums, **geo},
        8,
    )  # fmt: skip


def test_channels_last_group_norm_kernels_compile():
    xwb = {"x_ptr": "bf16", "w_ptr": "bf16", "b_ptr": "bf16"}
    stats = {"mean_ptr": "fp32", "rstd_ptr": "fp32"}
    geo = {"S": 65536, "C": 128, "num_chunks": 2048, "BLOCK_S": 32, "BLOCK_C": 128}
    sums = {"sum_dz_ptr": "fp32", "sum_dz_xhat_ptr": "fp32"}
    _compile(
        GCL.gn_cl_bwd_reduce_kernel,
        {"dout_ptr": "bf16", **xwb, **stats, **sums, **geo, "cpg": 4, "tiles": 8},
        8,
    )
    _compile(
        GCL.gn_cl_bwd_dx_kernel,
        {"dout_ptr": "bf16", **xwb, "dx_ptr": "bf16", **stats, "m1_ptr": "fp32",
         "m2_ptr": "fp32", **geo, "cpg": 4},
        8,
    )  # fmt: skip


@pytest.mark.parametrize(("channels", "groups"), [(128, 32), (512, 32), (96, 32)])
def test_channels_last_forward_kernels_compile(channels, groups):
    """The forward statistics / apply and ``bias_residual`` kernels at the VAE's widths
    (power-of-two) and a padded one (96 channels, 3 per group)."""
    from mugv_kernels._launch import next_pow2
    from mugv_kernels.channels_last import _block_rows

    rows = _block_rows(channels)
    cpg = channels // groups
    _compile(
        GCL.gn_cl_group_stats_kernel,
        {"x_ptr": "bf16", "bias_ptr": "bf16", "mean_ptr": "fp32", "m2_ptr": "fp32",
         "cnt_ptr": "fp32", "S": 14400, "P": 225, "HAS_BIAS": True, "C": channels,
         "G": groups, "CPG": cpg, "BLOCK_G": next_pow2(groups), "BLOCK_CPG": next_pow2(cpg),
         "BLOCK_S": rows, "TILES": 8},
        8,
    )  # fmt: skip
    geo = {"C": channels, "BLOCK_C": next_pow2(channels)}
    _compile(
        GCL.gn_cl_scale_shift_silu_kernel,
        {"x_ptr": "bf16", "out_ptr": "bf16", "a_ptr": "fp32", "b_ptr": "fp32", "S": 14400,
         **geo, "BLOCK_S": rows},
        8,
    )  # fmt: skip
    _compile(
        GCL.bias_residual_kernel,
        {"x_ptr": "bf16", "bias_ptr": "bf16", "r_ptr": "bf16", "out_ptr": "bf16", "M": 28800,
         **geo, "BLOCK_M": rows},
        8,
    )  # fmt: skip


@pytest.mark.parametrize("cpc", [1, 2])
def test_cooperative_group_norm_kernels_compile(cpc):
    xwb = {"x_ptr": "bf16", "w_ptr": "bf16", "b_ptr": "bf16"}
    stats = {"mean_ptr": "fp32", "rstd_ptr": "fp32", "cnt_ptr": "i32"}
    geo = {"C": 128, "S": 65536, "cpg": 4, "num_items": 4352, "K": 8, "KC": 2, "SC": 32768}
    meta = {"CPC": cpc, "TILE": 4096, "CB": 8}
    fwd = GCO.gn_coop_fwd_kernel
    _compile(
        fwd, {**xwb, "out_ptr": "bf16", "mean_c_ptr": "fp32", "m2_c_ptr": "fp32", **stats,
              **geo, "eps": 1e-6, **meta}, 8
    )  # fmt: skip
    _compile(
        GCO.gn_coop_bwd_kernel,
        {"dout_ptr": "bf16", **xwb, "dx_ptr": "bf16", "sum_dz_ptr": "fp32",
         "sum_dzx_ptr": "fp32", **stats, **geo, **meta},
        8,
    )  # fmt: skip
