"""FP8 (e4m3) linears for the DiT, applied from outside the model (``runtime.quantization``).

Row-wise scaled float8 (the recipe torchao calls "dynamic float8 activations and weights,
per row"):

    s_w[n] = max_k |W[n, k]| / 448          W_q = W / s_w      (stored: float8_e4m3fn + s_w)
    s_x[m] = max_k |X[m, k]| / 448          X_q = X / s_x      (per token, at every call)
    Y[m, n] = s_x[m] * s_w[n] * sum_k X_q[m, k] W_q[n, k] + b[n]

448 is the largest finite e4m3 value. Backends of the same arithmetic:

* ``scaled_mm``: :class:`Fp8Linear` calling ``torch._scaled_mm`` with row-wise scales
  (Hopper/Ada; what ``auto`` picks there: measured on an H100 with torch 2.11, 2026-12-07);
* ``torchao``: ``torchao.quantization.Float8DynamicActivationFloat8WeightConfig(PerRow())``
  through :class:`TorchaoFp8Linear` (needs a GPU of compute capability >= 8.9 and torchao,
  extra ``mugv-infer[fp8]``; only when asked for by name: on the 2026-12-07 H100 run with
  torchao 0.18 / torch 2.11 every ``mlp.fc2`` (K = 13,824) was refused by cuBLASLt at load and
  an all-zero activation row came out NaN, see :data:`TORCHAO_AMAX_FLOOR`);
* ``emulated``: :class:`Fp8Linear` computing the product of the dequantised float8 values
  in float32 (any device: CPU tests; slow, for checking numerics only).

Modes (``runtime.fp8_mode``): ``dynamic`` (the above: float8 GEMMs, the speed mode) and
``weight_only`` (float8 storage, each weight dequantized to bf16 at its call and multiplied in
bf16: the memory mode, ~1.4x less error per layer, no GEMM speed-up).

Every block linear (self-attention qkv/proj, cross-attention q/kv/proj, MLP fc1/fc2) is
quantized unless kept: embedders, the adaLN ``t_block`` and the final layer always stay in
their dtype (small, and the most sensitive); ``keep`` patterns (``runtime.fp8_keep_bf16``, or
the layers an fp8 calibration chose, :mod:`mugv_infer.fp8_calibration`) keep more.
:func:`quantize_fp8` checks each layer against its own output on probe inputs at load and keeps a
layer in bf16 where the float8 result is non-finite or further than ``tolerance`` (relative L2) from
it, or the kernel refuses the shape (the probe rows always include an all-zero row: a backend that
turns it into NaN is caught at load, not mid-generation); the report says which layers were kept and
why. That per-layer error is the format's floor, the same for every healthy layer (e4m3's 3 mantissa
bits: ~0.037 dynamic, ~0.026 weight-only, measured 0.0376 mean / 0.040 max over the 10b's 392 layers
on an H100), so it guards against broken layers (outliers, overflow) but cannot rank them: what a
layer's error does to the video is measured by the calibration (each layer group's effect on the DiT
output, then the final latent).

Legend: M rows (tokens), K input features, N output features.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
FP8_DTYPE = torch.float8_e4m3fn
BACKENDS = ("auto", "torchao", "scaled_mm", "emulated")
MODES = ("dynamic", "weight_only")
DEFAULT_TOLERANCE = 0.05
"""Relative L2 a float8 layer may differ from its own bf16 output on the probe inputs: 1.35x
the dynamic floor (row-wise e4m3 gives about 0.037 on Gaussian inputs, 0.026 weight-only; a
layer with large shared offsets in its inputs, where the scale swallows the signal, goes far
beyond)."""
EAGER_CHUNK = 2**27
"""Values of an activation quantized at once outside ``torch.compile`` (512 MiB of float32
temporaries; compiled, the quantization fuses and needs none)."""
TORCHAO_AMAX_FLOOR = 1e-12
"""The floor torchao is given for an activation row's max-abs (``activation_value_lb``; the
value of torchao.float8's own ``EPS``). torchao 0.18's row scale is ``amax / 448`` with no
floor, so an all-zero row (zero text embeddings, as in the benchmark's warm-up) gets scale 0 and
quantizes to 0 / 0 = NaN: the NaN latents of the 2026-12-07 H100 e2e run. :class:`Fp8Linear`
gives such a row scale 1 instead (:func:`rowwise_scale`)."""
BLOCK_LINEARS = (
    "self_attention.qkv",
    "self_attention.proj",
    "cross_attention.q",
    "cross_attention.kv",
    "cross_attention.proj",
    "mlp.fc1",
    "mlp.fc2",
)
"""The linears of a DiT block that FP8 replaces (names under ``blocks.<i>.``)."""


def rowwise_scale(x_MK: torch.Tensor) -> torch.Tensor:
    """``[..., 1]`` float32 scales: each row's max-abs over 448 (an all-zero row gets 1)."""
    amax = x_MK.abs().amax(dim=-1, keepdim=True).float()
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def quantize_rowwise(x_MK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (float8_e4m3fn values ``[..., K]``, float32 scales ``[..., 1]``) with
    ``x ~= values * scales``."""
    scale = rowwise_scale(x_MK)
    q = (x_MK.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    return q, scale


def fp8_hardware(device: torch.device | str | None) -> bool:
    """Whether ``device`` has float8 tensor cores (CUDA compute capability >= 8.9)."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def torchao_available() -> bool:
    try:
        from torchao.quantization import (  # noqa: F401
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
        )
    except Exception:  # not installed, or it does not import against this torch
        return False
    return True


def scaled_mm_rowwise(
    xq_MK: torch.Tensor, sx_M1: torch.Tensor, wq_NK: torch.Tensor, sw_N1: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """``(X_q W_q^T) * s_x * s_w^T`` through ``torch._scaled_mm`` (row-wise scales)."""
    return torch._scaled_mm(
        xq_MK,
        wq_NK.t(),  # column-major [K, N], as the kernel wants
        scale_a=sx_M1,
        scale_b=sw_N1.t(),
        out_dtype=out_dtype,
        use_fast_accum=True,
    )


def emulated_mm_rowwise(
    xq_MK: torch.Tensor, sx_M1: torch.Tensor, wq_NK: torch.Tensor, sw_N1: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """The same product of the float8 values in float32 (exact inputs, fp32 accumulation)."""
    y = (xq_MK.float() @ wq_NK.float().t()) * sx_M1 * sw_N1.t()
    return y.to(out_dtype)


class Fp8Linear(nn.Module):
    """``nn.Linear`` with float8 e4m3 weights and per-row scales. ``weight_only=False``:
    activations quantized per token at each call, product by ``backend``: ``scaled_mm`` (CUDA,
    sm >= 8.9) or ``emulated``; ``weight_only=True``: the weight dequantized (float32, then
    the activation dtype) at each call and multiplied in the activations' dtype.

    The weights are buffers (``weight`` float8, ``weight_scale`` float32 ``[N, 1]``): moving
    the module moves them, a dtype cast of the module leaves them as they are."""

    def __init__(
        self, weight_NK: torch.Tensor, bias_N: torch.Tensor | None, backend: str,
        weight_only: bool = False,
    ):  # fmt: skip
        super().__init__()
        if backend not in ("scaled_mm", "emulated"):
            raise ValueError(f"Fp8Linear backend {backend!r}: 'scaled_mm' or 'emulated'")
        self.in_features, self.out_features = weight_NK.shape[1], weight_NK.shape[0]
        self.backend = backend
        self.weight_only = weight_only
        q, scale = quantize_rowwise(weight_NK.detach())
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", scale)
        self.bias = None if bias_N is None else nn.Parameter(bias_N.detach().clone(), False)
        self.compute_dtype = weight_NK.dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, backend: str, weight_only: bool = False) -> Fp8Linear:
        return cls(linear.weight, linear.bias, backend, weight_only)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``W_q * s_w`` in float32, returned in ``dtype`` (one rounding)."""
        return (self.weight.float() * self.weight_scale).to(dtype)

    def _apply(self, fn, recurse=True):
        """Moves keep the float8 weights and float32 scales as they are (a module-wide
        ``.to(bfloat16)`` would otherwise cast them)."""
        kept = {name: self._buffers[name] for name in ("weight", "weight_scale")}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        if self.bias is not None:
            self.compute_dtype = self.bias.dtype
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_only:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)
        lead = x.shape[:-1]
        x_MK = x.reshape(-1, self.in_features)
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32
        if self.backend == "scaled_mm" and out_dtype == torch.float32:
            out_dtype = torch.bfloat16  # the row-wise kernel writes bf16
        rows = x_MK.shape[0]
        chunk = rows if torch.compiler.is_compiling() else max(1, EAGER_CHUNK // self.in_features)
        if chunk >= rows:
            y = self._product(x_MK, out_dtype)
        else:  # eager: the float32 quantization temporaries of at most EAGER_CHUNK values
            y = torch.empty(rows, self.out_features, dtype=out_dtype, device=x.device)
            for i in range(0, rows, chunk):
                y[i : i + chunk] = self._product(x_MK[i : i + chunk], out_dtype)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def _product(self, x_MK: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        xq, sx = quantize_rowwise(x_MK)
        mm = scaled_mm_rowwise if self.backend == "scaled_mm" else emulated_mm_rowwise
        y = mm(xq, sx, self.weight, self.weight_scale, out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, "
            + ("weight_only" if self.weight_only else f"backend={self.backend}")
        )


@dataclass
class LayerCheck:
    name: str
    backend: str
    """What the layer runs: a float8 backend, or ``bf16`` (kept)."""
    rel_l2: float | None
    reason: str = ""
    """Why it was kept in its dtype (empty when quantized)."""


@dataclass
class Fp8Report:
    backend: str
    tolerance: float
    layers: list[LayerCheck] = field(default_factory=list)
    mode: str = "dynamic"

    @property
    def quantized(self) -> list[str]:
        return [c.name for c in self.layers if c.backend != "bf16"]

    @property
    def kept(self) -> list[LayerCheck]:
        return [c for c in self.layers if c.backend == "bf16"]

    def summary(self) -> dict:
        errs = [c.rel_l2 for c in self.layers if c.rel_l2 is not None and c.backend != "bf16"]
        kept_by_choice = [c for c in self.kept if c.reason == KEPT_BY_CHOICE]
        return {
            "backend": self.backend,
            "mode": self.mode,
            "tolerance": self.tolerance,
            "kept_by_choice": len(kept_by_choice),
            "quantized": len(self.quantized),
            "kept_bf16": [
                {"layer": c.name, "reason": c.reason}
                for c in self.kept
                if c.reason != KEPT_BY_CHOICE
            ],
            "max_rel_l2": max(errs) if errs else None,
            "mean_rel_l2": sum(errs) / len(errs) if errs else None,
        }


def resolve_backend(backend: str, device: torch.device | str | None) -> str:
    """``auto`` -> ``scaled_mm`` (a float8 GPU), ``emulated`` (anything else: numerics only,
    with a warning). ``torchao`` only by name: ``auto`` picked it where it imported until
    2026-12-07, when torchao 0.18 on torch 2.11 (H100) refused every ``mlp.fc2`` at load and
    produced NaN on all-zero rows (module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"runtime.fp8_backend {backend!r} unknown; choose from {BACKENDS}")
    hw = fp8_hardware(device)
    if backend == "auto":
        if hw:
            return "scaled_mm"
        warnings.warn(
            f"quantization=fp8 on {device}: no float8 tensor cores (CUDA sm >= 8.9); the "
            "float8 arithmetic is emulated in float32 (checks numerics, not faster)",
            stacklevel=2,
        )
        return "emulated"
    if backend in ("torchao", "scaled_mm") and not hw:
        raise ValueError(
            f"runtime.fp8_backend={backend!r} needs a CUDA GPU of compute capability >= 8.9 "
            f"(device {device}); use 'emulated' to check numerics elsewhere"
        )
    if backend == "torchao" and not torchao_available():
        raise ValueError(
            "runtime.fp8_backend='torchao' but torchao does not import: "
            "pip install 'mugv-infer[fp8]' (or fp8_backend=scaled_mm)"
        )
    return backend


class TorchaoFp8Linear(nn.Module):
    """torchao's row-wise float8 linear (``Float8DynamicActivationFloat8WeightConfig(PerRow(),
    activation_value_lb=TORCHAO_AMAX_FLOOR)``) of a bias-free copy of ``linear``, the bias added
    to the product afterwards in the output dtype, as :class:`Fp8Linear` does.

    Why the bias is outside: torchao passes it into ``torch._scaled_mm`` (cuBLASLt's bias
    epilogue), and on the 2026-12-07 H100 run (torch 2.11, CUDA 13.0) cuBLASLt found no
    algorithm for any ``mlp.fc2`` (K = 13,824, 64 probe rows) there, while our ``scaled_mm``,
    which adds the bias itself, ran the same shapes; torchao 0.18 also warns of
    CUBLAS_STATUS_NOT_SUPPORTED for large-K / small-M row-wise shapes under CUDA 12.9
    (pytorch/ao#4582). Which of the two was the trigger is for the GPU test on the 10b's
    shapes to tell (``test_gpu_fast.py``)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )

        self.in_features, self.out_features = linear.in_features, linear.out_features
        inner = nn.Linear(
            self.in_features, self.out_features, bias=False,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )  # fmt: skip
        inner.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        holder = nn.Sequential(inner)  # quantize_ replaces children in place
        config = Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), activation_value_lb=TORCHAO_AMAX_FLOOR
        )
        quantize_(holder, config)
        self.inner = holder[0]
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def fp8_linear(linear: nn.Linear, backend: str, mode: str = "dynamic") -> nn.Module:
    """A float8 version of ``linear`` on its device (``backend`` resolved; ``mode`` dynamic or
    weight_only, the latter always our :class:`Fp8Linear`)."""
    if mode == "weight_only":
        return Fp8Linear.from_linear(linear, "emulated", weight_only=True)
    if backend == "torchao":
        return TorchaoFp8Linear(linear)
    return Fp8Linear.from_linear(linear, backend)


def shape_refusal(linear: nn.Linear, backend: str, mode: str = "dynamic") -> str:
    """Why the float8 kernel cannot take this layer ('' when it can)."""
    if mode == "dynamic" and backend in ("torchao", "scaled_mm"):
        n, k = linear.weight.shape
        if k % 16 or n % 16:
            return f"shape [{n}, {k}] not a multiple of 16 (float8 kernel)"
    return ""


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float32 (inf when not finite)."""
    a, b = a.float(), b.float()
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def default_probe(linear: nn.Linear, rows: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, linear.in_features, generator=g)
    return x.to(device=linear.weight.device, dtype=linear.weight.dtype)


def with_zero_row(x_MK: torch.Tensor) -> torch.Tensor:
    """``x`` with one all-zero row appended: the load-time check's probe of the per-row scale
    of an empty row (an exact float8 linear gives its bias there; torchao 0.18 without a floor
    gave NaN, :data:`TORCHAO_AMAX_FLOOR`)."""
    return torch.cat([x_MK, x_MK.new_zeros(1, x_MK.shape[-1])])


def block_linears(transformer) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """``(name, parent module, attribute, linear)`` of every :data:`BLOCK_LINEARS` layer."""
    out = []
    for i, block in enumerate(transformer.blocks):
        for path in BLOCK_LINEARS:
            parent_name, attr = path.rsplit(".", 1)
            parent = block.get_submodule(parent_name)
            child = getattr(parent, attr)
            if isinstance(child, nn.Linear):
                out.append((f"blocks.{i}.{path}", parent, attr, child))
    return out


@torch.no_grad()
def capture_linear_inputs(
    transformer, run: Callable[[], object], rows: int = 64, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Run ``run()`` once and keep, for each block linear, ``rows`` of the inputs it saw
    (token rows drawn with ``seed``): the probe inputs of the load-time check."""
    got: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)
    hooks = []
    for name, _parent, _attr, linear in block_linears(transformer):

        def hook(_mod, args, _out, name=name):
            x = args[0].reshape(-1, args[0].shape[-1])
            pick = torch.randperm(x.shape[0], generator=g)[:rows].to(x.device)
            got[name] = x[pick].detach().clone()

        hooks.append(linear.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return got


KEPT_BY_CHOICE = "kept: fp8_keep_bf16 / calibration"


def matches(name: str, patterns) -> bool:
    """Whether layer ``name`` matches one of the fnmatch ``patterns`` (``blocks.0.*``,
    ``*.self_attention.qkv``, or a full name)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@torch.no_grad()
def quantize_fp8(
    transformer,
    *,
    backend: str = "auto",
    device: torch.device | str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    probes: dict[str, torch.Tensor] | None = None,
    mode: str = "dynamic",
    keep: tuple[str, ...] | list[str] = (),
    keep_originals: dict | None = None,
) -> Fp8Report:
    """Replace the block linears of ``transformer`` with float8 ones, layer by layer, each
    checked against its own output on its probe inputs (``probes[name]``, else Gaussian rows;
    one all-zero row added to either); a layer that fails the check stays as it was, and so does
    a layer matching ``keep`` (fnmatch patterns). ``device``: where the float8 weights go
    (default: where each layer is). Layers living on the CPU are moved to ``device`` one at a
    time (the bf16 model never sits whole on the GPU). ``keep_originals``: a dict that receives
    ``{name: bf16 linear}`` of the replaced layers (calibration switches between both; default:
    freed)."""
    if tolerance <= 0:
        raise ValueError(f"runtime.fp8_tolerance must be > 0, got {tolerance}")
    if mode not in MODES:
        raise ValueError(f"runtime.fp8_mode {mode!r} unknown; choose from {MODES}")
    device = (
        torch.device(device) if device is not None else transformer.blocks[0].mlp.fc1.weight.device
    )
    resolved = "emulated" if mode == "weight_only" else resolve_backend(backend, device)
    report = Fp8Report(resolved if mode == "dynamic" else "weight_only", tolerance, mode=mode)
    # slots only: a replaced bf16 layer is freed at once (the whole bf16 stack never sits on
    # the GPU beside the float8 one)
    slots = [(name, parent, attr) for name, parent, attr, _ in block_linears(transformer)]
    for name, parent, attr in slots:
        linear = getattr(parent, attr).to(device)
        setattr(parent, attr, linear)
        if matches(name, keep):
            report.layers.append(LayerCheck(name, "bf16", None, KEPT_BY_CHOICE))
            continue
        refusal = shape_refusal(linear, resolved, mode)
        if refusal:
            report.layers.append(LayerCheck(name, "bf16", None, refusal))
            continue
        probe = probes.get(name) if probes else None
        x = (default_probe(linear) if probe is None else probe).to(device, linear.weight.dtype)
        x = with_zero_row(x.reshape(-1, x.shape[-1]))
        try:
            q = fp8_linear(linear, resolved, mode)
            err = relative_l2(q(x), linear(x))
        except (RuntimeError, AssertionError, NotImplementedError) as e:  # kernel refused
            report.layers.append(LayerCheck(name, "bf16", None, f"{type(e).__name__}: {e}"[:200]))
            continue
        if not err <= tolerance:
            why = "non-finite output" if err == float("inf") else f"rel L2 {err:.3g} > {tolerance}"
            report.layers.append(LayerCheck(name, "bf16", err, why))
            continue
        setattr(parent, attr, q)
        if keep_originals is not None:
            keep_originals[name] = linear
        report.layers.append(LayerCheck(name, report.backend, err))
    failed = [c for c in report.kept if c.reason != KEPT_BY_CHOICE]
    if failed:
        log.warning(
            "fp8: %d of %d layers failed the check and stay in their dtype: %s",
            len(failed),
            len(report.layers),
            "; ".join(f"{c.name} ({c.reason})" for c in failed[:5]),
        )
    return report


def load_time_probes(transformer, device, rows: int = 64, seed: int = 0) -> dict:
    """Probe inputs from one forward of ``transformer`` on a small random video (2 latent
    frames of 4 x 4 patches, 16 text tokens): the activations each block linear sees."""
    cfg = transformer.config
    pt, ph, pw = transformer.patch
    g = torch.Generator().manual_seed(seed)
    dtype = transformer.t_block.weight.dtype
    x = torch.randn(1, cfg.in_channels, 2 * pt, 4 * ph, 4 * pw, generator=g)
    text = torch.randn(1, 16, cfg.text_dim, generator=g)
    mask = torch.ones(1, 16, dtype=torch.bool)

    backend = transformer.blocks[0].self_attention.backend if transformer.blocks else "auto"

    def run():
        transformer(
            x.to(device, dtype), torch.tensor([0.5], device=device), text.to(device, dtype),
            mask.to(device), attention_kwargs={"backend": "sdpa"},
        )  # fmt: skip

    try:
        return capture_linear_inputs(transformer, run, rows=rows, seed=seed)
    finally:
        transformer.set_attention_backend(backend)  # the probe's SDPA is not kept


def kept_layers(runtime) -> list[str]:
    """``runtime.fp8_keep_bf16`` plus the layers a calibration file (``runtime.fp8_calibration``,
    :func:`mugv_infer.fp8_calibration.read_calibration`) keeps in bf16."""
    keep = list(runtime.fp8_keep_bf16)
    if runtime.fp8_calibration is not None:
        from mugv_infer.fp8_calibration import read_calibration

        keep += read_calibration(runtime.fp8_calibration, runtime.fp8_mode)
    return keep


def apply_quantization(transformer, runtime, device) -> Fp8Report | None:
    """``runtime.quantization`` applied to ``transformer`` (on the CPU, as loaded): the
    probe inputs from one small forward where it is, then each block linear quantized onto
    ``device`` (``fp8_mode``, minus the kept layers); None when quantization is ``none``."""
    if runtime.quantization == "none":
        return None
    keep = kept_layers(runtime)
    here = transformer.t_block.weight.device
    probes = load_time_probes(transformer, here)
    return quantize_fp8(
        transformer,
        backend=runtime.fp8_backend,
        device=device,
        tolerance=runtime.fp8_tolerance,
        probes=probes,
        mode=runtime.fp8_mode,
        keep=keep,
    )
