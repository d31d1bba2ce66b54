"""Checkpoint folder naming (step_0000100, old step-0000100 read) and pruning."""

from __future__ import annotations

import pytest
from mugv_formats.checkpoint_dirs import (
    checkpoint_step,
    prune_step_dirs,
    step_dir_name,
    step_dirs,
)


def test_names_new_and_old():
    assert step_dir_name(100) == "step_0000100"
    assert checkpoint_step("step_0000100") == 100 and checkpoint_step("step-0000042") == 42
    assert checkpoint_step("latest") is None and checkpoint_step("step_12x") is None
    with pytest.raises(ValueError):
        step_dir_name(-1)


def test_step_dirs_sorted_by_step_and_filtered(tmp_path):
    for name in ["step_0000010", "step-0000002", "step_0000003", "latest", "step_0000099"]:
        (tmp_path / name).mkdir()
    (tmp_path / "step_0000099" / "x").write_text("")
    (tmp_path / "step_0000100").write_text("a file, not a folder")
    names = [p.name for p in step_dirs(tmp_path)]
    assert names == ["step-0000002", "step_0000003", "step_0000010", "step_0000099"]
    assert [p.name for p in step_dirs(tmp_path, lambda p: (p / "x").exists())] == ["step_0000099"]
    assert step_dirs(tmp_path / "missing") == []


def test_prune_keeps_newest_and_the_protected_one(tmp_path):
    for s in [1, 2, 3, 4, 5]:
        (tmp_path / step_dir_name(s)).mkdir()
    removed = prune_step_dirs(tmp_path, keep=2, protect={"step_0000002"})
    assert sorted(p.name for p in removed) == ["step_0000001", "step_0000003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_0000002",
        "step_0000004",
        "step_0000005",
    ]
    assert prune_step_dirs(tmp_path, keep=0) == []  # 0: keep all
    assert len(list(tmp_path.iterdir())) == 3
