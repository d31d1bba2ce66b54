"""GPU paths (run with -m gpu on a CUDA machine): RAFT motion on CUDA agrees with CPU."""

from __future__ import annotations

import numpy as np
import pytest
from mugv_data.config import MotionConfig
from mugv_data.stages.base import Clip, ClipFrames
from mugv_data.stages.filters import MotionFilter
from mugv_data.synth import scene


def _clip(frames) -> Clip:
    arr = np.stack(frames)
    return Clip(
        key="k-0000",
        source="s",
        index=0,
        start_frame=0,
        end_frame=len(arr),
        start_s=0.0,
        end_s=len(arr) / 25,
        fps=25.0,
        frames=ClipFrames(len(arr), 25.0, lambda i: arr[list(i)]),
    )


def test_raft_needs_local_weights():
    with pytest.raises(ValueError, match="raft_weights"):
        MotionFilter(MotionConfig(method="raft", raft_weights=None, device="cpu")).setup()


def test_raft_without_torchvision_names_the_extra(tmp_path, monkeypatch):
    """torchvision is the optional ``raft`` extra: its absence is one ValueError naming it."""
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    monkeypatch.setitem(sys.modules, "torchvision.models.optical_flow", None)
    cfg = MotionConfig(method="raft", raft_weights=str(tmp_path / "w.pth"), device="cpu")
    with pytest.raises(ValueError, match=r"needs torchvision: install mugv-data\[raft\]"):
        MotionFilter(cfg).setup()


@pytest.mark.gpu
def test_raft_motion_cuda_matches_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision.models.optical_flow")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    torch.save(tv.raft_small().state_dict(), tmp_path / "raft_small.pth")
    frames = scene(20, h=128, w=160, speed=2.0, seed=1)
    scores = {}
    for dev in ("cpu", "cuda"):
        f = MotionFilter(
            MotionConfig(
                method="raft",
                raft_small=True,
                raft_weights=str(tmp_path / "raft_small.pth"),
                device=dev,
                min=None,
                max=None,
                flow_short_side=128,
            )
        )
        assert f.resources.gpus == (0.5 if dev == "cuda" else 0.0)
        c = _clip(frames)
        f.process([c])
        scores[dev] = c.scores
    for k in ("motion", "motion_start", "motion_middle", "motion_end"):
        assert np.isfinite(scores["cuda"][k])
        assert scores["cuda"][k] == pytest.approx(scores["cpu"][k], rel=1e-3, abs=1e-4)
