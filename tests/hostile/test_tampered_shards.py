"""Tampered clip/latent shards and dataset headers (issue 17, defects 3, 4, 10)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hostile_util import rewrite_members
from mugv_formats import (
    ChecksumError,
    ClipDataset,
    ClipRecord,
    ClipShardWriter,
    CorruptShardError,
    FormatError,
    atomic_write_text,
)


def _clip(i: int) -> ClipRecord:
    return ClipRecord(
        key=f"clip{i:03d}",
        source=f"/videos/v{i}.mp4",
        start_s=0.0,
        end_s=2.0,
        fps=25.0,
        num_frames=50,
        width=64,
        height=48,
    )


def _write_clips(out: Path, n: int = 3) -> Path:
    with ClipShardWriter(out, producer="test 0.0", clips_per_shard=2) as w:
        for i in range(n):
            w.write(_clip(i), bytes([i + 1]) * 64)
    return out


def _inspect(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mugv_formats.cli", "inspect", str(path), *args],
        capture_output=True,
        text=True,
    )


def test_changed_byte_in_record_member_fails_verification(tmp_path):
    """Defect 3: fps 25 -> 2590 in clip000.json passes no check any more."""
    ds = _write_clips(tmp_path / "clips")
    rewrite_members(
        ds / "shard-000000.tar",
        lambda name, b: b.replace(b'"fps":25.0', b'"fps":2590.0') if name == "clip000.json" else b,
    )
    with pytest.raises(ChecksumError, match=r"clip000\.json"):
        list(ClipDataset(ds))
    r = _inspect(ds, "--verify")
    assert r.returncode == 2, r.stderr
    assert "clip000.json" in r.stderr and "Traceback" not in r.stderr


def test_record_disagreeing_with_manifest_is_refused_in_old_data(tmp_path):
    """A 1.0 dataset (no record checksums in its manifest) still reads, and a record that
    disagrees with its manifest row is refused."""
    ds = _write_clips(tmp_path / "clips")
    for name in ("manifest.parquet", "shard-000000.parquet", "shard-000001.parquet"):
        table = pq.read_table(ds / name)
        if "record_sha256" in table.column_names:
            table = table.drop_columns(["record_sha256"])
        pq.write_table(table, ds / name)
    header = json.loads((ds / "dataset.json").read_text())
    header["version"] = "1.0"
    (ds / "dataset.json").write_text(json.dumps(header))
    assert len(list(ClipDataset(ds))) == 3  # old data still reads
    rewrite_members(
        ds / "shard-000000.tar",
        lambda name, b: b.replace(b'"fps":25.0', b'"fps":2590.0') if name == "clip001.json" else b,
    )
    with pytest.raises(ChecksumError, match=r"clip001\.json.*fps"):
        list(ClipDataset(ds))


@pytest.mark.parametrize("bad", ["../outside.tar", "/etc/passwd", "sub/shard-000000.tar"])
def test_header_shard_path_outside_dataset_is_refused(tmp_path, bad):
    """Defect 4: dataset.json naming a shard outside the dataset is refused like a tar member."""
    ds = _write_clips(tmp_path / "clips")
    (tmp_path / "outside.tar").write_bytes((ds / "shard-000000.tar").read_bytes())
    header = json.loads((ds / "dataset.json").read_text())
    header["shards"] = {bad: 2, **header["shards"]}
    (ds / "dataset.json").write_text(json.dumps(header))
    with pytest.raises(FormatError, match="shard"):
        list(ClipDataset(ds))
    r = _inspect(ds)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_written_files_follow_the_umask(tmp_path):
    """Defect 10: headers, manifests, checkpoints are as readable as the shards (0644)."""
    old = os.umask(0o022)
    try:
        ds = _write_clips(tmp_path / "clips")
        atomic_write_text(tmp_path / "latest", "step\n")
    finally:
        os.umask(old)
    for p in [ds / "dataset.json", ds / "manifest.parquet", ds / "shard-000000.parquet"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE((tmp_path / "latest").stat().st_mode) == 0o644


def test_weights_folder_follows_the_umask(tmp_path):
    torch = pytest.importorskip("torch")
    from mugv_formats import VAE_CHECKPOINT_FORMAT, save_weights_folder

    old = os.umask(0o022)
    try:
        path = save_weights_folder(
            tmp_path / "w",
            format=VAE_CHECKPOINT_FORMAT,
            architecture="x",
            config={},
            state_dict={"a": torch.zeros(2)},
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for p in path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_truncated_shard_is_refused_by_name(tmp_path):
    ds = _write_clips(tmp_path / "clips")
    shard = ds / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:700])
    with pytest.raises(CorruptShardError, match="shard-000000.tar"):
        list(ClipDataset(ds))


def test_inspect_of_a_garbled_header_is_one_line_exit_2(tmp_path):
    ds = _write_clips(tmp_path / "clips")
    (ds / "dataset.json").write_text("{ not json")
    r = _inspect(ds)
    assert r.returncode == 2 and "dataset.json" in r.stderr and "Traceback" not in r.stderr
