"""A wrapper over VBench / VBench-I2V (the ``vbench`` package), run in its own interpreter.

``vbench`` pins old numpy and transformers, so it lives in an environment of its own:
``--vbench-python PATH`` names that interpreter (default: this one, when it can import
``vbench``). The wrapper writes a request, runs :mod:`mugv.evaluation.vbench_runner` there as a
child process (killed with this one), and reads VBench's ``NAME_eval_results.json``:
``{dimension: [score, [per-video rows]]}``. Models come from a local folder only
(``--vbench-models``, handed over as ``VBENCH_CACHE_DIR`` with ``local=True``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

#: Dimensions that work on any prompt (VBench's ``custom_input`` mode).
CUSTOM_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
)
#: VBench-I2V's image-conditioned dimensions (they need the conditioning images).
I2V_DIMENSIONS = ("i2v_subject", "i2v_background", "camera_motion")
SUITES = ("vbench", "vbench-i2v")
RUNNER = Path(__file__).with_name("vbench_runner.py")


def find_python(vbench_python: str | None) -> str:
    """The interpreter that has vbench: the one given (it must exist), else this one."""
    if vbench_python:
        p = Path(vbench_python).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--vbench-python {p} does not exist")
        return str(p)
    if importlib.util.find_spec("vbench") is None:
        raise ValueError(
            "VBench is not importable here (it pins numpy<2 and old transformers): install it "
            "in an environment of its own and give its interpreter with --vbench-python"
        )
    return sys.executable


def run_vbench(
    videos: str | Path,
    output: str | Path,
    *,
    models: str | Path,
    dimensions: list[str] | tuple[str, ...] = CUSTOM_DIMENSIONS,
    suite: str = "vbench",
    python: str | None = None,
    prompts: dict[str, str] | None = None,
    image_folder: str | Path | None = None,
    resolution: str = "1-1",
    device: str = "cuda",
    name: str = "mugv",
    mode: str = "custom_input",
    timeout_s: float | None = None,
) -> dict:
    """Run the suite on a folder of videos; ``{"suite", "dimensions": {dim: score},
    "per_video": {dim: rows}, "results_file"}``."""
    from mugv_formats import atomic_write_text
    from mugv_formats.lifecycle import die_with_parent

    if suite not in SUITES:
        raise ValueError(f"unknown VBench suite {suite!r}; choose one of {SUITES}")
    videos, output = Path(videos).expanduser().resolve(), Path(output).expanduser().resolve()
    if not videos.is_dir():
        raise FileNotFoundError(f"VBench videos folder {videos} does not exist")
    models = Path(models).expanduser()
    if not models.is_dir():
        raise FileNotFoundError(f"VBench model folder {models} does not exist (--vbench-models)")
    if not dimensions:
        raise ValueError("no VBench dimensions chosen")
    if suite == "vbench" and (bad := [d for d in dimensions if d in I2V_DIMENSIONS]):
        raise ValueError(f"dimensions {bad} belong to VBench-I2V (--vbench-suite vbench-i2v)")
    needs_images = suite == "vbench-i2v" and any(d in I2V_DIMENSIONS for d in dimensions)
    if needs_images and (image_folder is None or not Path(image_folder).is_dir()):
        raise FileNotFoundError(
            f"VBench-I2V's {list(I2V_DIMENSIONS)} need the conditioning images: "
            f"--vbench-images {image_folder} is not a folder"
        )
    python = find_python(python)
    output.mkdir(parents=True, exist_ok=True)
    request = {
        "suite": suite,
        "videos": str(videos),
        "output": str(output),
        "name": name,
        "dimensions": list(dimensions),
        "mode": mode,
        "device": device,
        "resolution": resolution,
        "image_folder": str(Path(image_folder).resolve()) if image_folder else None,
        # VBench matches prompts by absolute video path
        "prompts": {str(videos / k): v for k, v in (prompts or {}).items()} or None,
    }
    req_path = output / f"{name}_request.json"
    atomic_write_text(req_path, json.dumps(request, indent=1))
    done = output / f"{name}_done.json"
    done.unlink(missing_ok=True)
    env = {**os.environ, "VBENCH_CACHE_DIR": str(models.resolve())}
    log = output / f"{name}_vbench.log"
    with log.open("wb") as f:
        proc = subprocess.run(
            [python, str(RUNNER), str(req_path)],
            stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout_s,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    if proc.returncode != 0 or not done.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(
            f"VBench failed (exit {proc.returncode}, log {log}): " + " | ".join(tail)
        )
    results_file = Path(json.loads(done.read_text())["results"])
    return parse_results(results_file, suite)


def parse_results(path: Path, suite: str = "vbench") -> dict:
    """VBench's ``{dimension: [score, rows]}`` (or ``{dimension: score}``) file."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"VBench results {path} unreadable: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"VBench results {path}: expected an object of dimensions")
    scores, per_video = {}, {}
    for dim, value in raw.items():
        if isinstance(value, list | tuple) and value:
            score, rows = value[0], value[1] if len(value) > 1 else []
        else:
            score, rows = value, []
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise ValueError(f"VBench results {path}: dimension {dim!r} has no score ({score!r})")
        scores[dim] = float(score)
        per_video[dim] = rows
    return {"suite": suite, "dimensions": scores, "per_video": per_video,
            "results_file": str(path)}  # fmt: skip
