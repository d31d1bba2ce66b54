"""Empty datasets and the VAE encode stage (defects 5, 6, 10)."""

from __future__ import annotations

import warnings

import numpy as np
from mugv_formats import ClipShardWriter, LatentDataset, LatentShardWriter, energon


def test_empty_latent_dataset_is_valid_not_a_traceback(tmp_path):
    """Defect 5: a 0-sample latent set (energon indexing included) is an empty valid dataset."""
    header = LatentShardWriter.make_header(
        producer="t",
        vae_checkpoint_id="v",
        latent_channels=2,
        latent_mean=[0.0, 0.0],
        latent_std=[1.0, 1.0],
    )
    with LatentShardWriter(tmp_path / "lat", header, energon=energon.energon_available()):
        pass
    ds = LatentDataset(tmp_path / "lat")
    assert len(ds) == 0 and ds.records() == [] and list(ds) == []


def test_encoding_an_empty_clip_dataset_is_one_line_exit_2(tmp_path, capsys):
    """Defect 5: curation kept 0 clips -> `mugv-vae encode` names the empty input."""
    from mugv_vae.cli import main

    with ClipShardWriter(tmp_path / "clips", producer="t"):
        pass
    argv = ["encode", "--checkpoint", str(tmp_path / "vae"), "--input", str(tmp_path / "clips")]
    assert main([*argv, "--output", str(tmp_path / "lat"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "clips" in err and "no clips" in err and len(err.splitlines()) == 1


def test_encode_of_a_missing_input_is_one_line_exit_2(tmp_path, capsys):
    from mugv_vae.cli import main

    argv = ["encode", "--checkpoint", str(tmp_path / "vae"), "--input", str(tmp_path / "none")]
    assert main([*argv, "--output", str(tmp_path / "lat"), "--device", "cpu"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_vae_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    from mugv_formats import ClipRecord
    from mugv_vae.cli import main

    with ClipShardWriter(tmp_path / "clips", producer="t") as w:
        rec = ClipRecord(
            key="c0", source="s", start_s=0, end_s=1, fps=8, num_frames=8, width=16, height=16
        )
        w.write(rec, b"not decoded before the checkpoint loads")
    argv = ["encode", "--checkpoint", str(tmp_path / "nockpt"), "--input", str(tmp_path / "clips")]
    assert main([*argv, "--output", str(tmp_path / "lat"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nockpt" in err and len(err.splitlines()) == 1


def test_frames_warning_names_the_rule():
    """Defect 10: `--frames 4` on a long clip says that the 1+8k rule chose 1."""
    from mugv_vae.video import prepare_clip

    raw = np.zeros((4, 16, 16, 3), np.uint8)  # decoding stops at the requested 4 frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = prepare_clip(raw, 4, [(16, 16)], where="clip")
    assert x.shape[1] == 1
    (w,) = caught
    assert "1+8k" in str(w.message) and "4 frames available" not in str(w.message)


def test_vae_config_that_is_not_yaml_is_one_line(tmp_path, capsys):
    from mugv_vae.cli import main

    (tmp_path / "bad.yaml").write_text("a: [\n")
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid YAML" in err and len(err.splitlines()) == 1
