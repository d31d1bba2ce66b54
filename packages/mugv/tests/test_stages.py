"""The pipeline's stages: inputs and captions, keys that follow the inputs, and every command
naming a console script that this environment has."""

from __future__ import annotations

import os
from pathlib import Path

from mugv.cli import STAGE_NAMES
from mugv.config import load_config
from mugv.runner import stage_key
from mugv.stages import build_stages, caption_for


def _cfg(tmp_path: Path, *extra: str):
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    (videos / "my_bike-ride.mp4").write_bytes(b"x" * 10)
    (videos / "notes.txt").write_text("not a video")
    return load_config(None, ["curate.samples=false", f"curate.inputs=[{videos}]", *extra])


def test_stages_in_order_and_every_command_exists(tmp_path):
    stages = build_stages(_cfg(tmp_path), tmp_path / "run")
    assert [s.name for s in stages] == STAGE_NAMES
    for stage in stages:
        for step in stage.steps:
            if step.cmd is not None:
                assert Path(step.cmd[0]).is_file(), (stage.name, step.cmd[0])
        assert all(str(p).startswith(str(tmp_path / "run")) for p in stage.outputs)
    no_mem = build_stages(_cfg(tmp_path, "memorise.enabled=false"), tmp_path / "run")
    assert "memorise" not in [s.name for s in no_mem]


def test_inputs_captions_and_keys(tmp_path):
    cfg = _cfg(tmp_path)
    curate = build_stages(cfg, tmp_path / "run")[0]
    assert [Path(v[0]).name for v in curate.settings["videos"]] == ["my_bike-ride.mp4"]
    assert curate.settings["captions"] == {"my_bike-ride.mp4": "a video of my bike ride"}
    assert caption_for(Path("bikes.mp4"), cfg.curate.captions) == cfg.curate.captions["bikes.mp4"]

    before = stage_key(curate, "")
    video = tmp_path / "videos" / "my_bike-ride.mp4"
    video.write_bytes(b"y" * 20)  # the input changed: the curate stage (and all after) redo
    os.utime(video, (1, 1))
    assert stage_key(build_stages(cfg, tmp_path / "run")[0], "") != before
