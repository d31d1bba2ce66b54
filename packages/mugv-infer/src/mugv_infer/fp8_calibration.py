"""Which block linears run in float8: chosen by their measured effect on the output.

The per-layer load-time check (:mod:`mugv_infer.quantize`) sees the same error in every
healthy layer (e4m3's floor), so it cannot say which layers matter. This calibration measures
it on the model, in three steps:

1. **Cells.** The block linears grouped by kind (self-attention qkv / proj, cross-attention
   q / kv / proj, MLP fc1 / fc2) x block band (the first ``edge`` blocks, the middle in
   ``middle_bands`` parts, the last ``edge``): 7 x 4 = 28 cells by default.
2. **Sensitivity.** The DiT output (velocity) with only cell c in float8, against all-bf16, on
   the same DiT inputs (captured from a few steps of one bf16 generation): ``e_c`` (rel L2).
3. **Choice.** Independent rounding errors add in quadrature, so a float8 set S is predicted
   at ``r * sqrt(sum_{c in S} e_c^2)``, with ``r`` = final-latent rel L2 / velocity rel L2 of
   the all-float8 model (measured once). Cells go to float8 in the order of ``e_c^2 /
   benefit_c`` (benefit: the cell's share of the linear FLOPs per video token for
   ``dynamic``, of the weights for ``weight_only``) while the prediction stays within
   ``budget``. Then the **final latent** of a generation from the same noise is measured with
   the chosen set; while it is above ``budget``, the float8 cell with the highest
   ``e_c^2 / benefit_c`` goes back to bf16 (at most ``max_rounds`` generations).
4. **Growth.** Where that first verification comes out below the prediction (the errors of a
   subset add up to less than the all-float8 ratio says: 1.57 % measured for 2.98 % predicted
   on the 10b, H100 2026-12-07), the ratio measured on the verified set replaces ``r`` and the
   choice is made again; a larger set is verified by a generation and kept only if its final
   latent fits (else the verified smaller set stays). Repeated with the latest measured ratio
   while generations (``max_rounds``) remain and the choice grows.

The result (:class:`Fp8Calibration`, JSON) names the layers kept in bf16;
``runtime.fp8_calibration: file.json`` keeps them at load. Legend: d hidden, f FFN width.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mugv_infer.quantize import BLOCK_LINEARS, MODES, relative_l2

FORMAT = "mugv-infer fp8 calibration"
TEXT_PER_VIDEO_TOKEN = 300 / 50402
"""Text tokens per video token at 720p x 105 frames: the cross-attention kv projection runs on
the text only, so its share of the FLOPs is this small."""


@dataclass(frozen=True)
class Cell:
    """One kind of block linear over a band of blocks."""

    kind: str
    blocks: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.kind}[{self.blocks[0]}:{self.blocks[-1] + 1}]"

    def names(self) -> list[str]:
        return [f"blocks.{i}.{self.kind}" for i in self.blocks]


def block_bands(num_blocks: int, edge: int = 2, middle_bands: int = 2) -> list[tuple[int, ...]]:
    """The first ``edge`` blocks, the middle split in ``middle_bands`` parts, the last
    ``edge`` (fewer bands when there are few blocks; every block in exactly one band)."""
    if num_blocks <= 0:
        return []
    if num_blocks <= 2 * edge:
        return [(i,) for i in range(num_blocks)]
    bands = [tuple(range(edge))]
    middle = list(range(edge, num_blocks - edge))
    parts = max(1, min(middle_bands, len(middle)))
    for p in range(parts):
        lo, hi = p * len(middle) // parts, (p + 1) * len(middle) // parts
        bands.append(tuple(middle[lo:hi]))
    bands.append(tuple(range(num_blocks - edge, num_blocks)))
    return bands


def make_cells(
    num_blocks: int, edge: int = 2, middle_bands: int = 2, kinds=BLOCK_LINEARS
) -> list[Cell]:
    return [Cell(kind, band) for band in block_bands(num_blocks, edge, middle_bands) for kind in kinds]


def kind_weight(kind: str, hidden: int, ffn: int, mode: str) -> float:
    """One block's ``kind`` linear: multiply-adds per video token (``dynamic``: what float8
    GEMMs speed up) or weights (``weight_only``: what float8 storage saves)."""
    d, f = hidden, ffn
    weights = {
        "self_attention.qkv": 3 * d * d,
        "self_attention.proj": d * d,
        "cross_attention.q": d * d,
        "cross_attention.kv": 2 * d * d,
        "cross_attention.proj": d * d,
        "mlp.fc1": d * f,
        "mlp.fc2": f * d,
    }[kind]
    if mode == "dynamic" and kind == "cross_attention.kv":
        return weights * TEXT_PER_VIDEO_TOKEN
    return float(weights)


def choose(
    errors: list[float], benefits: list[float], budget: float, ratio: float = 1.0
) -> set[int]:
    """Indices of the cells in float8: in the order of ``e^2 / benefit`` (cheapest error per
    unit of benefit first), each taken while ``ratio * sqrt(sum e^2)`` stays <= ``budget``."""
    order = sorted(range(len(errors)), key=lambda i: (errors[i] ** 2 / max(benefits[i], 1e-30), i))
    chosen, total = set(), 0.0
    for i in order:
        if ratio * math.sqrt(total + errors[i] ** 2) <= budget:
            chosen.add(i)
            total += errors[i] ** 2
    return chosen


def worst(chosen: set[int], errors: list[float], benefits: list[float]) -> int:
    """The float8 cell to give back first: the highest ``e^2 / benefit``."""
    return max(chosen, key=lambda i: (errors[i] ** 2 / max(benefits[i], 1e-30), i))


class LayerSwitch:
    """Both versions of each quantized block linear: :meth:`use` puts the float8 one in
    exactly the named layers and the original everywhere else."""

    def __init__(self, transformer: nn.Module, originals: dict[str, nn.Module]):
        self.slots: dict[str, tuple[nn.Module, str]] = {}
        self.fp8: dict[str, nn.Module] = {}
        self.bf16 = dict(originals)
        for name in originals:
            parent_name, attr = name.rsplit(".", 1)
            parent = transformer.get_submodule(parent_name)
            self.slots[name] = (parent, attr)
            self.fp8[name] = getattr(parent, attr)

    @property
    def names(self) -> set[str]:
        return set(self.slots)

    def use(self, fp8_names) -> None:
        fp8_names = set(fp8_names)
        unknown = fp8_names - self.names
        if unknown:
            raise KeyError(f"not quantized layers: {sorted(unknown)[:3]}")
        for name, (parent, attr) in self.slots.items():
            setattr(parent, attr, self.fp8[name] if name in fp8_names else self.bf16[name])


@dataclass
class Fp8Calibration:
    mode: str
    budget: float
    cells: list[dict] = field(default_factory=list)
    all_fp8: dict = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)
    keep_bf16: list[str] = field(default_factory=list)
    fp8_layers: int = 0
    fp8_benefit_share: float = 0.0
    final_latent_rel_l2: float | None = None
    met: bool = False

    def to_json(self) -> dict:
        return {"format": FORMAT, **self.__dict__}

    def write(self, path: Path) -> None:
        from mugv_formats.atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_json(), indent=1) + "\n")


def calibrate_fp8(
    switch: LayerSwitch,
    cells: list[Cell],
    benefits: list[float],
    velocity: Callable[[set[str]], torch.Tensor],
    final_latent: Callable[[set[str]], torch.Tensor],
    budget: float,
    *,
    mode: str = "dynamic",
    max_rounds: int = 4,
    grow: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> Fp8Calibration:
    """The float8 layer set (see the module docstring). ``velocity(names)`` / ``final_latent
    (names)``: the DiT outputs on the captured inputs / the final latent of the reference
    generation, with exactly ``names`` in float8 (the callers make both deterministic).
    Cells without a quantized layer (all kept at load) are left out."""
    if not budget > 0:
        raise ValueError(f"fp8 calibration budget must be > 0, got {budget}")
    if mode not in MODES:
        raise ValueError(f"fp8 mode {mode!r} unknown; choose from {MODES}")
    if len(benefits) != len(cells):
        raise ValueError(f"{len(cells)} cells but {len(benefits)} benefits")
    live = [
        (c, b, [n for n in c.names() if n in switch.names]) for c, b in zip(cells, benefits)
    ]
    live = [(c, b * len(ns) / len(c.names()), ns) for c, b, ns in live if ns]
    everything = set(switch.names)
    v0, f0 = velocity(set()), final_latent(set())
    v_all = relative_l2(velocity(everything), v0)
    f_all = relative_l2(final_latent(everything), f0)
    ratio = f_all / v_all if v_all > 0 else 1.0
    cal = Fp8Calibration(mode, budget)
    cal.all_fp8 = {"velocity_rel_l2": v_all, "final_latent_rel_l2": f_all, "ratio": ratio}
    log(f"all float8: velocity rel L2 {v_all:.3e}, final latent {f_all:.3e}")
    errors = []
    for cell, _b, names in live:
        errors.append(relative_l2(velocity(set(names)), v0))
        log(f"{cell.label}: velocity rel L2 {errors[-1]:.3e}")
    gains = [b for _c, b, _n in live]
    if f_all <= budget:  # everything fits: no generation more
        chosen, final = set(range(len(live))), f_all
        cal.rounds.append({"fp8_cells": len(live), "final_latent_rel_l2": f_all})
    else:
        chosen, final = choose(errors, gains, budget, ratio), None
        for _ in range(max(1, max_rounds)):
            names = {n for i in chosen for n in live[i][2]}
            final = relative_l2(final_latent(names), f0) if chosen else 0.0
            predicted = ratio * math.sqrt(sum(errors[i] ** 2 for i in chosen))
            cal.rounds.append(
                {"fp8_cells": len(chosen), "predicted": predicted, "final_latent_rel_l2": final}
            )
            log(f"{len(chosen)} of {len(live)} cells in float8: final latent rel L2 {final:.3e} "
                f"(predicted {predicted:.3e})")  # fmt: skip
            if final <= budget or not chosen:
                break
            chosen.discard(worst(chosen, errors, gains))
        if grow and len(cal.rounds) == 1 and final <= budget and chosen:
            chosen, final = _grow(
                chosen, final, errors, gains, budget, ratio, live, f0, final_latent, cal,
                max_rounds, log,
            )  # fmt: skip
    fp8_names = {n for i in chosen for n in live[i][2]}
    switch.use(fp8_names)
    total = sum(gains)
    cal.cells = [
        {"cell": c.label, "layers": len(ns), "velocity_rel_l2": e, "benefit": b,
         "fp8": i in chosen}
        for i, ((c, b, ns), e) in enumerate(zip(live, errors))
    ]  # fmt: skip
    cal.keep_bf16 = sorted(everything - fp8_names)
    cal.fp8_layers = len(fp8_names)
    cal.fp8_benefit_share = sum(gains[i] for i in chosen) / total if total else 0.0
    cal.final_latent_rel_l2 = final
    cal.met = final is not None and final <= budget
    return cal


def _grow(chosen, final, errors, gains, budget, ratio, live, f0, final_latent, cal, max_rounds, log):
    """Step 4 of the module docstring: -> (the largest verified set, its final latent)."""

    def spent(cells):
        return math.sqrt(sum(errors[i] ** 2 for i in cells))

    def benefit(cells):
        return sum(gains[i] for i in cells)

    measured = final / spent(chosen) if spent(chosen) > 0 else ratio
    while len(cal.rounds) < max_rounds and measured < ratio * (1 - 1e-6):
        bigger = choose(errors, gains, budget, measured)
        if benefit(bigger) <= benefit(chosen):
            break
        names = {n for i in bigger for n in live[i][2]}
        f = relative_l2(final_latent(names), f0)
        predicted = measured * spent(bigger)
        cal.rounds.append(
            {"fp8_cells": len(bigger), "predicted": predicted, "final_latent_rel_l2": f,
             "grown": True}
        )  # fmt: skip
        log(f"grown to {len(bigger)} cells with the measured ratio {measured:.3g}: final "
            f"latent rel L2 {f:.3e} (predicted {predicted:.3e}) "
            + ("kept" if f <= budget else "over the budget: the smaller set stays"))  # fmt: skip
        if f <= budget:
            chosen, final = bigger, f
        # the ratio this set measured: lower grows the choice further, higher (a set over the
        # budget) chooses between the verified set and this one
        measured = f / spent(bigger) if spent(bigger) > 0 else ratio
    return chosen, final


def read_calibration(path: Path, mode: str) -> list[str]:
    """The layer names a calibration file keeps in bf16 (its ``mode`` must be ``mode``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"runtime.fp8_calibration: {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"runtime.fp8_calibration: {path} is not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"runtime.fp8_calibration: {path} is not an {FORMAT!r} file")
    keep = data.get("keep_bf16")
    if not isinstance(keep, list) or not all(isinstance(n, str) for n in keep):
        raise ValueError(f"runtime.fp8_calibration: {path}: keep_bf16 must be a list of names")
    if data.get("mode") != mode:
        raise ValueError(
            f"runtime.fp8_calibration: {path} was made for fp8_mode={data.get('mode')!r}, "
            f"this run uses {mode!r}"
        )
    return keep


# ------------------------------------------------------------------ DiT inputs to replay
def capture_dit_calls(transformer: nn.Module, run: Callable[[], object], pick) -> list:
    """Run ``run()`` and keep the arguments of the DiT calls whose index is in ``pick`` (tensors
    cloned): the inputs :func:`replay` feeds again."""
    pick, calls, seen = set(pick), [], [0]

    def clone(v):
        return v.detach().clone() if isinstance(v, torch.Tensor) else v

    def hook(_mod, args, kwargs):
        if seen[0] in pick:
            calls.append(([clone(a) for a in args], {k: clone(v) for k, v in kwargs.items()}))
        seen[0] += 1

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return calls


@torch.no_grad()
def replay(transformer: nn.Module, calls: list) -> torch.Tensor:
    """The DiT outputs on the captured calls, flattened and concatenated (float32)."""
    outs = []
    for args, kwargs in calls:
        out = transformer(*args, **kwargs)
        out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        outs.append(out.float().flatten())
    return torch.cat(outs)
