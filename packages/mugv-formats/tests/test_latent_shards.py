from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from formats_testutil import set_json_field
from mugv_formats import (
    CorruptShardError,
    LatentDataset,
    LatentRecord,
    LatentShardWriter,
    VersionError,
)


def _rec(key: str = "k") -> LatentRecord:
    return LatentRecord(key=key, fps=24, num_frames=17, height=32, width=32)


def _header(**kw):
    base = dict(
        producer="t",
        vae_checkpoint_id="v",
        latent_channels=4,
        latent_mean=[0] * 4,
        latent_std=[1] * 4,
        text_dim=8,
    )
    base.update(kw)
    return LatentShardWriter.make_header(**base)


def test_round_trip(latent_dataset: Path) -> None:
    ds = LatentDataset(latent_dataset)
    h = ds.header
    assert (h.vae_checkpoint_id, h.text_encoder_id, h.text_dim) == ("vae-test", "t5-tiny", 8)
    assert h.latent_mean == [0.1, 0.2, 0.3, 0.4] and h.latent_std == [1.0, 2.0, 3.0, 4.0]
    assert h.latents_normalized is True and h.compression == (8, 8, 8)
    rng = np.random.default_rng(0)
    samples = list(ds)
    assert [s.record.key for s in samples] == ["s0", "s1", "s2"]
    for i, s in enumerate(samples):
        lat = rng.standard_normal((4, 3, 4, 4)).astype(np.float16)
        txt = rng.standard_normal((5 + i, 8)).astype(np.float32)
        np.testing.assert_array_equal(s.latents, lat)
        np.testing.assert_array_equal(s.text, txt)
        assert s.latents.dtype == np.float16 and s.record.latent_shape == [4, 3, 4, 4]
        assert s.record.text_length == 5 + i
    assert [r.key for r in ds.records()] == ["s0", "s1", "s2"]


def test_energon_metadata_written(latent_dataset: Path) -> None:
    meta = latent_dataset / ".nv-meta"
    assert "CrudeWebdataset" in (meta / "dataset.yaml").read_text()
    assert (meta / "split.yaml").is_file() and (meta / ".info.json").is_file()


def test_text_optional(tmp_path: Path) -> None:
    with LatentShardWriter(tmp_path, _header(text_dim=None), energon=False) as w:
        w.write(_rec(), np.zeros((4, 1, 2, 2), np.float32))
    (s,) = list(LatentDataset(tmp_path))
    assert s.text is None and s.record.text_length is None


@pytest.mark.parametrize(
    ("latents", "text", "match"),
    [
        (np.zeros((3, 1, 2, 2), np.float32), None, r"latents must be \[C=4"),
        (np.zeros((4, 2, 2), np.float32), None, r"latents must be \[C=4"),
        (np.zeros((4, 1, 2, 2), np.int32), None, "dtype int32"),
        (np.full((4, 1, 2, 2), np.nan, np.float32), None, "NaN"),
        (
            np.zeros((4, 1, 2, 2), np.float32),
            np.zeros((3, 7), np.float32),
            "text dim 7 != header text_dim 8",
        ),
        (
            np.zeros((4, 1, 2, 2), np.float32),
            np.zeros((301, 8), np.float32),
            "301 text tokens > max_text_len 300",
        ),
        (
            np.zeros((4, 1, 2, 2), np.float32),
            np.zeros((8,), np.float32),
            r"text features must be \[L, D\]",
        ),
    ],
)
def test_bad_samples_refused(tmp_path: Path, latents, text, match) -> None:
    w = LatentShardWriter(tmp_path, _header(), energon=False)
    with pytest.raises(ValueError, match=match):
        w.write(_rec(), latents, text)


def test_header_stats_validated() -> None:
    with pytest.raises(ValueError, match="latent_mean has 3 values"):
        _header(latent_mean=[0, 0, 0])
    with pytest.raises(ValueError, match="latent_std must be positive"):
        _header(latent_std=[1, 1, 0, 1])


def test_newer_major_refused(latent_dataset: Path) -> None:
    set_json_field(latent_dataset / "dataset.json", version="3.1")
    with pytest.raises(VersionError, match=r"mugv.latent-shards version 3\.1 is a newer major"):
        LatentDataset(latent_dataset)


def test_shape_mismatch_with_record_detected(latent_dataset: Path) -> None:
    ds = LatentDataset(latent_dataset)
    rec, members = next(ds.iter_shard("shard-000000.tar"))
    bad = rec.model_copy(update={"latent_shape": [4, 9, 4, 4]})
    with pytest.raises(
        CorruptShardError,
        match=r"s0\.latents\.npy has shape \[4, 3, 4, 4\], record says \[4, 9, 4, 4\]",
    ):
        LatentDataset.decode(bad, members, "x")


def test_garbage_npy_detected(latent_dataset: Path) -> None:
    ds = LatentDataset(latent_dataset)
    rec, members = next(ds.iter_shard("shard-000000.tar"))
    members["latents.npy"] = b"not an array"
    with pytest.raises(CorruptShardError, match="not a readable .npy"):
        LatentDataset.decode(rec, members, "x")
