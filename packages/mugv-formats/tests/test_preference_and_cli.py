from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mugv_formats import (
    VAE_CHECKPOINT_FORMAT,
    FormatError,
    KTOSample,
    PreferencePair,
    read_preference_data,
    save_weights_folder,
    write_preference_data,
)
from mugv_formats.cli import main
from mugv_formats.preference import check_keys_exist


def test_dpo_round_trip(tmp_path: Path) -> None:
    pairs = [PreferencePair(chosen="a", rejected="b", caption="c", label_source="human")]
    write_preference_data(tmp_path / "p", pairs, latent_dataset="/lat", producer="t")
    header, items = read_preference_data(tmp_path / "p")
    assert header.kind == "dpo" and header.num_items == 1 and header.latent_dataset == "/lat"
    assert items == pairs


def test_kto_round_trip_and_key_check(tmp_path: Path) -> None:
    samples = [KTOSample(key="a", desirable=True), KTOSample(key="b", desirable=False, weight=2)]
    write_preference_data(tmp_path / "k", samples, latent_dataset="/lat", producer="t")
    header, items = read_preference_data(tmp_path / "k")
    assert header.kind == "kto" and items == samples
    check_keys_exist(items, {"a", "b"}, where="k")
    with pytest.raises(FormatError, match="item 1: latent sample 'b' not in"):
        check_keys_exist(items, {"a"}, where="k")
    pairs = [PreferencePair(chosen="a", rejected="c")]
    with pytest.raises(FormatError, match=r"^p item 0: latent sample 'c' not in /lat$"):
        check_keys_exist(pairs, {"a": 0, "b": 1}, where="p", dataset="/lat")  # a dict's keys


def test_preference_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same sample 'a'"):
        PreferencePair(chosen="a", rejected="a")
    with pytest.raises(ValueError, match="all PreferencePair"):
        write_preference_data(
            tmp_path,
            [PreferencePair(chosen="a", rejected="b"), KTOSample(key="a", desirable=True)],
            latent_dataset="x",
            producer="t",
        )


def test_inspect_clip_dataset(clip_dataset: Path, capsys) -> None:
    assert main(["inspect", str(clip_dataset), "--verify", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_clips"] == 5 and info["verified_clips"] == 5
    assert info["scores"]["sharpness"]["min"] == 250.0


def test_inspect_latents_tar_and_weights(latent_dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(latent_dataset), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_samples"] == 3 and info["latent_shapes"] == {"4x3x4x4": 3}
    assert main(["inspect", str(latent_dataset / "shard-000000.tar"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 2 and info["extensions"] == {
        "latents.npy": 2,
        "text.npy": 2,
        "json": 2,
    }
    save_weights_folder(
        tmp_path / "w",
        format=VAE_CHECKPOINT_FORMAT,
        architecture="a",
        config={},
        state_dict={"x": torch.zeros(3, 4)},
    )
    assert main(["inspect", str(tmp_path / "w")]) == 0
    assert "num_parameters: 12" in capsys.readouterr().out


def test_inspect_errors(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "not a mugv shard" in capsys.readouterr().err
