from __future__ import annotations

import io
import os
import tarfile
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from formats_testutil import clip_record, rewrite_tar, set_json_field
from mugv_formats import (
    ChecksumError,
    ClipDataset,
    ClipShardWriter,
    CorruptShardError,
    FormatError,
    MissingFieldError,
    VersionError,
)


def test_round_trip(clip_dataset: Path) -> None:
    ds = ClipDataset(clip_dataset)
    assert ds.header.format == "mugv.clip-shards" and ds.header.version == "1.1"
    assert ds.header.producer == "test 0.0" and ds.header.config == {"seed": 1}
    assert ds.header.shards == {"shard-000000.tar": 2, "shard-000001.tar": 2, "shard-000002.tar": 1}
    items = list(ds)
    assert [r.key for r, _ in items] == [f"clip{i:03d}" for i in range(5)]
    for i, (rec, data) in enumerate(items):
        assert data == bytes([i]) * (50 + i)
        assert rec == clip_record(i).model_copy(
            update={"shard": rec.shard, "checksums": rec.checksums}
        )
        assert len(rec.sha256) == 64
    # the manifest agrees with the records inside the shards, scores as columns
    assert [r for r in ds.records()] == [r for r, _ in items]
    table = pq.read_table(clip_dataset / "manifest.parquet")
    assert {"score.sharpness", "score.motion", "caption", "shard", "checksums"} <= set(
        table.column_names
    )


def test_real_clip_bytes_round_trip(tmp_path: Path, sample_video_dir: Path) -> None:
    mp4 = sorted(sample_video_dir.glob("*.mp4"))[0]
    data = mp4.read_bytes()
    with ClipShardWriter(tmp_path / "c", producer="t") as w:
        w.write(clip_record(0, source=str(mp4)), data)
    ((rec, back),) = list(ClipDataset(tmp_path / "c"))
    assert back == data and rec.source == str(mp4)


def test_resume_keeps_complete_shards_and_drops_partial(tmp_path: Path) -> None:
    out = tmp_path / "clips"
    w = ClipShardWriter(out, producer="t", clips_per_shard=2)
    for i in range(3):  # shard 0 complete, shard 1 open with one clip
        w.write(clip_record(i), b"v%d" % i)
    w._tar.close()  # simulate a kill: the open shard stays a temporary file, no close()
    assert not (out / "dataset.json").exists()
    with pytest.raises(FormatError, match="dataset.json"):
        ClipDataset(out)
    w2 = ClipShardWriter(out, producer="t", clips_per_shard=2)
    done = {r.key for r in w2.existing_records()}
    assert done == {"clip000", "clip001"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    for i in range(2, 5):
        if clip_record(i).key not in done:
            w2.write(clip_record(i), b"v%d" % i)
    w2.close()
    keys = [r.key for r, _ in ClipDataset(out)]
    assert keys == [f"clip{i:03d}" for i in range(5)]


def test_duplicate_key_refused(tmp_path: Path) -> None:
    with ClipShardWriter(tmp_path, producer="t") as w:
        w.write(clip_record(0), b"a")
        with pytest.raises(ValueError, match="duplicate sample key 'clip000'"):
            w.write(clip_record(0), b"b")


@pytest.mark.parametrize("bad", ["a.b", "a/b", "", "../x"])
def test_invalid_keys_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="sample key"):
        clip_record(0, key=bad)


def test_invalid_span_refused() -> None:
    with pytest.raises(ValueError, match="end_s"):
        clip_record(0, start_s=3.0, end_s=2.0)


def test_checksum_mismatch_names_shard_and_member(clip_dataset: Path) -> None:
    shard = clip_dataset / "shard-000001.tar"
    tmp = shard.with_name("x.tar")

    def flip(info, data):
        if info.name == "clip003.mp4":
            data = b"\xff" + data[1:]
        return [(info, data)]

    rewrite_tar(shard, tmp, flip)
    os.replace(tmp, shard)
    ds = ClipDataset(clip_dataset)
    with pytest.raises(
        ChecksumError, match=r"shard-000001\.tar: member clip003\.mp4 fails its sha256"
    ):
        list(ds)
    # shards before the bad one still read
    assert len(list(ds.iter_clips("shard-000000.tar"))) == 2


def test_truncated_shard(clip_dataset: Path) -> None:
    shard = clip_dataset / "shard-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: 512 + 20])  # header of the first member + part of its data
    with pytest.raises(CorruptShardError, match=r"shard-000000\.tar.*(truncated|unreadable)"):
        list(ClipDataset(clip_dataset))


def test_missing_shard_file(clip_dataset: Path) -> None:
    (clip_dataset / "shard-000002.tar").unlink()
    with pytest.raises(CorruptShardError, match=r"shard-000002\.tar: shard listed"):
        ClipDataset(clip_dataset)


@pytest.mark.parametrize("name", ["../evil.mp4", "/abs/evil.mp4", "a/../../evil.mp4"])
def test_path_traversal_refused(clip_dataset: Path, name: str) -> None:
    shard = clip_dataset / "shard-000000.tar"
    with tarfile.open(shard, "a") as t:
        info = tarfile.TarInfo(name)
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(CorruptShardError, match="refused"):
        list(ClipDataset(clip_dataset).iter_clips("shard-000000.tar"))


def test_symlink_member_refused(clip_dataset: Path) -> None:
    shard = clip_dataset / "shard-000000.tar"
    with tarfile.open(shard, "a") as t:
        info = tarfile.TarInfo("clip009.mp4")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        t.addfile(info)
    with pytest.raises(CorruptShardError, match="not a regular file"):
        list(ClipDataset(clip_dataset).iter_clips("shard-000000.tar"))


def test_missing_field_in_record_member(clip_dataset: Path) -> None:
    shard = clip_dataset / "shard-000000.tar"
    tmp = shard.with_name("x.tar")
    import json

    def drop_fps(info, data):
        if info.name == "clip001.json":
            d = json.loads(data)
            del d["fps"]
            data = json.dumps(d).encode()
        return [(info, data)]

    rewrite_tar(shard, tmp, drop_fps)
    os.replace(tmp, shard)
    # verified reads refuse the changed record by its checksum first (tests/hostile)
    with pytest.raises(
        MissingFieldError, match=r"member clip001\.json: invalid ClipRecord: field fps"
    ):
        list(ClipDataset(clip_dataset).iter_clips(verify=False))


def test_missing_field_in_header(clip_dataset: Path) -> None:
    import json

    p = clip_dataset / "dataset.json"
    d = json.loads(p.read_text())
    del d["version"]
    p.write_text(json.dumps(d))
    with pytest.raises(MissingFieldError, match="missing field 'version'"):
        ClipDataset(clip_dataset)


def test_newer_major_version_refused_naming_both(clip_dataset: Path) -> None:
    set_json_field(clip_dataset / "dataset.json", version="2.0")
    with pytest.raises(VersionError, match=r"version 2\.0 .*supports \(1\.x"):
        ClipDataset(clip_dataset)


def test_wrong_format_refused(clip_dataset: Path) -> None:
    set_json_field(clip_dataset / "dataset.json", format="mugv.latent-shards")
    with pytest.raises(VersionError, match="expected 'mugv.clip-shards'"):
        ClipDataset(clip_dataset)


def test_newer_minor_loads_with_warning_and_unknown_fields_ignored(clip_dataset: Path) -> None:
    set_json_field(clip_dataset / "dataset.json", version="1.7", added_in_1_7="x")
    with pytest.warns(UserWarning, match="newer than 1.1"):
        ds = ClipDataset(clip_dataset)
    assert len(list(ds)) == 5


def test_older_minor_loads(clip_dataset: Path, monkeypatch) -> None:
    from mugv_formats import versioning

    monkeypatch.setitem(versioning.CURRENT_VERSIONS, "mugv.clip-shards", "1.3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ClipDataset(clip_dataset).records()) == 5


def test_bad_version_string(clip_dataset: Path) -> None:
    set_json_field(clip_dataset / "dataset.json", version="one")
    with pytest.raises(VersionError, match="not of the form MAJOR.MINOR"):
        ClipDataset(clip_dataset)


def test_empty_video_refused(tmp_path: Path) -> None:
    with (
        ClipShardWriter(tmp_path, producer="t") as w,
        pytest.raises(ValueError, match="empty video"),
    ):
        w.write(clip_record(0), b"")
