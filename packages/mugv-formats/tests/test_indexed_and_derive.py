"""Random access (``open_indexed``), raw-member checks and derived headers."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from formats_testutil import clip_record, rewrite_tar
from mugv_formats import (
    ChecksumError,
    ClipDataset,
    CorruptShardError,
    LatentDataset,
    LatentRecord,
    LatentShardWriter,
    derive_header,
    member_digests,
)


def test_indexed_round_trip_matches_streaming_read(latent_dataset: Path) -> None:
    ds = LatentDataset(latent_dataset)
    streamed = list(ds)
    reader = ds.open_indexed()
    assert len(reader) == 3 and "s1" in reader and "zz" not in reader
    # by index, by key, out of order: the same arrays as the sequential read
    for i in (2, 0, 1):
        s = streamed[i]
        for got in (reader.load(i), reader.load(s.record.key)):
            assert got.record == s.record
            np.testing.assert_array_equal(got.latents, s.latents)
            np.testing.assert_array_equal(got.text, s.text)
            assert got.latents.dtype == np.float16
    assert reader.index_of("s2") == 2 and reader.record("s1").key == "s1"


def test_indexed_read_of_clip_members(clip_dataset: Path) -> None:
    reader = ClipDataset(clip_dataset).open_indexed()
    for i in (4, 0, 3):
        record, members = reader.load_members(f"clip{i:03d}")
        assert record.key == f"clip{i:03d}" and members == {"mp4": bytes([i]) * (50 + i)}


def test_indexed_unknown_key_and_index(latent_dataset: Path) -> None:
    reader = LatentDataset(latent_dataset).open_indexed()
    with pytest.raises(KeyError, match="no sample 'nope'"):
        reader.load("nope")
    with pytest.raises(IndexError, match="out of range"):
        reader.load(3)
    with pytest.raises(IndexError, match="out of range"):
        reader.load(-1)


def _tamper(shard: Path, name: str, change) -> None:
    tmp = shard.with_name("x.tar")

    def mutate(info, data):
        return [(info, change(data) if info.name == name else data)]

    rewrite_tar(shard, tmp, mutate)
    os.replace(tmp, shard)


def test_indexed_changed_latent_byte_is_refused(latent_dataset: Path) -> None:
    _tamper(latent_dataset / "shard-000000.tar", "s1.latents.npy", lambda d: d[:-1] + b"\x01")
    reader = LatentDataset(latent_dataset).open_indexed()
    reader.load("s0")  # the untouched sample still reads
    with pytest.raises(ChecksumError, match=r"shard-000000\.tar: member s1\.latents\.npy fails"):
        reader.load("s1")
    # without verification the bytes come back as stored
    assert LatentDataset(latent_dataset).open_indexed(verify=False).load("s1").latents.shape


def test_indexed_changed_record_member_is_refused(latent_dataset: Path) -> None:
    def change(data: bytes) -> bytes:
        d = json.loads(data)
        d["caption"] = "something else"
        return json.dumps(d).encode()

    _tamper(latent_dataset / "shard-000001.tar", "s2.json", change)
    reader = LatentDataset(latent_dataset).open_indexed()
    with pytest.raises(ChecksumError, match=r"shard-000001\.tar: member s2\.json fails"):
        reader.load(2)


def test_indexed_missing_member_is_named(latent_dataset: Path) -> None:
    shard = latent_dataset / "shard-000000.tar"
    tmp = shard.with_name("x.tar")
    rewrite_tar(shard, tmp, lambda info, data: [] if info.name == "s0.text.npy" else [(info, data)])
    os.replace(tmp, shard)
    with pytest.raises(CorruptShardError, match=r"member s0\.text\.npy is missing"):
        LatentDataset(latent_dataset).open_indexed().load("s0")


@pytest.mark.parametrize("name", ["../evil.npy", "/abs/evil.npy", "a/../../evil.npy"])
def test_indexed_unsafe_member_name_is_refused(latent_dataset: Path, name: str) -> None:
    with tarfile.open(latent_dataset / "shard-000000.tar", "a") as t:
        info = tarfile.TarInfo(name)
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(CorruptShardError, match="refused"):
        LatentDataset(latent_dataset).open_indexed().load("s0")


def test_indexed_link_member_is_refused(latent_dataset: Path) -> None:
    with tarfile.open(latent_dataset / "shard-000000.tar", "a") as t:
        info = tarfile.TarInfo("s9.latents.npy")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        t.addfile(info)
    with pytest.raises(CorruptShardError, match="not a regular file"):
        LatentDataset(latent_dataset).open_indexed().load("s1")


def test_indexed_duplicate_member_is_refused(latent_dataset: Path) -> None:
    with tarfile.open(latent_dataset / "shard-000000.tar", "a") as t:
        info = tarfile.TarInfo("s0.latents.npy")
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(CorruptShardError, match="appears twice"):
        LatentDataset(latent_dataset).open_indexed().load("s0")


def test_indexed_truncated_shard_is_refused(latent_dataset: Path) -> None:
    shard = latent_dataset / "shard-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: 512 + 40])  # the first member's header and part of its data
    with pytest.raises(CorruptShardError, match=r"shard-000000\.tar.*(truncated|unreadable)"):
        LatentDataset(latent_dataset).open_indexed().load("s0")


def test_indexed_manifest_row_naming_an_unlisted_shard_is_refused(latent_dataset: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = latent_dataset / "manifest.parquet"
    rows = pq.read_table(manifest).to_pylist()
    rows[0]["shard"] = "../../etc/shard.tar"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    with pytest.raises(CorruptShardError, match="does not list"):
        LatentDataset(latent_dataset).open_indexed()


def _raw_members(path: Path, key: str) -> dict[str, bytes]:
    out = {}
    for shard in sorted(path.glob("shard-*.tar")):
        with tarfile.open(shard) as t:
            for info in t.getmembers():
                k, ext = info.name.split(".", 1)
                if k == key:
                    out[ext] = t.extractfile(info).read()
    return out


def test_verify_members_of_raw_bytes(latent_dataset: Path) -> None:
    reader = LatentDataset(latent_dataset).open_indexed()
    raw = _raw_members(latent_dataset, "s1")
    assert set(raw) == {"json", "latents.npy", "text.npy"}
    assert reader.verify_members("s1", {**raw, "__key__": "s1"}).key == "s1"
    with pytest.raises(ChecksumError, match=r"member s1\.text\.npy fails"):
        reader.verify_members("s1", {**raw, "text.npy": raw["text.npy"][:-1] + b"\x07"})
    changed = raw["json"].replace(b'"caption":"c"', b'"caption":"d"')
    assert changed != raw["json"]
    with pytest.raises(ChecksumError, match=r"member s1\.json fails"):
        reader.verify_digests("s1", member_digests({**raw, "json": changed}))
    del raw["latents.npy"]
    with pytest.raises(CorruptShardError, match=r"member s1\.latents\.npy is missing"):
        reader.verify_members("s1", raw)


def test_derive_header_keeps_every_field_and_owns_the_rest(latent_dataset: Path) -> None:
    src = LatentDataset(latent_dataset).header
    out = derive_header(src, producer="me 1.0", config={"command": "x"}, text_dim=16)
    assert type(out) is type(src) and out.producer == "me 1.0" and out.config == {"command": "x"}
    assert out.shards == {} and out.text_dim == 16
    kept = src.model_dump(exclude={"producer", "config", "shards", "created", "text_dim"})
    assert out.model_dump(exclude={"producer", "config", "shards", "created", "text_dim"}) == kept
    with pytest.raises(ValueError, match="latent_mean has 4 values, latent_channels is 5"):
        derive_header(src, producer="p", config=None, latent_channels=5)
    with pytest.raises(ValueError, match="'shards' is set by the new dataset"):
        derive_header(src, producer="p", config=None, shards={"a.tar": 1})


def test_derive_header_carries_a_field_added_later(latent_dataset: Path) -> None:
    from mugv_formats import LatentDatasetHeader
    from pydantic import Field

    class Newer(LatentDatasetHeader):
        frame_rate_policy: str = Field(default="keep")

    src = Newer.model_validate(
        {**LatentDataset(latent_dataset).header.model_dump(), "frame_rate_policy": "resample"}
    )
    assert derive_header(src, producer="p", config=None).frame_rate_policy == "resample"


def test_record_for_rewrite_round_trips_through_a_new_dataset(
    latent_dataset: Path, tmp_path: Path
) -> None:
    ds = LatentDataset(latent_dataset)
    header = derive_header(ds.header, producer="copy", config=None)
    out = tmp_path / "copy"
    with LatentShardWriter(out, header, samples_per_shard=8, energon=False) as w:
        for s in ds:
            fresh = s.record.for_rewrite()
            assert fresh.shard == "" and fresh.checksums == {} and fresh.caption == "c"
            w.write(fresh, s.latents, s.text)
    copied = {s.record.key: s for s in LatentDataset(out)}
    for s in LatentDataset(latent_dataset):
        c = copied[s.record.key]
        np.testing.assert_array_equal(c.latents, s.latents)
        assert c.record.model_dump(exclude={"shard"}) == s.record.model_dump(exclude={"shard"})
    assert LatentDataset(out).header.vae_checkpoint_id == "vae-test"
    with pytest.raises(ValueError, match="fps"):
        LatentRecord(key="a", fps=1, num_frames=1, height=1, width=1).for_rewrite(fps=-1)
    assert clip_record(1).for_rewrite(caption="x").caption == "x"
