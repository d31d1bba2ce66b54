from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mugv_formats import (
    DIT_EXPORT_FORMAT,
    VAE_CHECKPOINT_FORMAT,
    ChecksumError,
    CorruptShardError,
    FormatError,
    VersionError,
    load_weights_folder,
    save_weights_folder,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "enc.w": torch.randn(64, 32, generator=g),
        "enc.b": torch.randn(64, generator=g).to(torch.bfloat16),
        "dec.w": torch.randn(32, 64, generator=g).t(),  # non-contiguous
        "steps": torch.tensor([7], dtype=torch.int64),
    }


@pytest.mark.parametrize("max_shard_bytes", [5 << 30, 4096])
def test_round_trip(tmp_path: Path, max_shard_bytes: int) -> None:
    sd = _state()
    save_weights_folder(
        tmp_path / "ck",
        format=VAE_CHECKPOINT_FORMAT,
        architecture="MUGVAE",
        config={"latent_channels": 24},
        state_dict=sd,
        extra={"latent_mean": [0.5]},
        max_shard_bytes=max_shard_bytes,
        producer="t",
    )
    wf = load_weights_folder(tmp_path / "ck", format=VAE_CHECKPOINT_FORMAT)
    assert wf.architecture == "MUGVAE" and wf.config == {"latent_channels": 24}
    assert wf.extra == {"latent_mean": [0.5]} and wf.version == "1.1"
    assert set(wf.state_dict) == set(sd)
    for k, v in sd.items():
        assert wf.state_dict[k].dtype == v.dtype
        assert torch.equal(wf.state_dict[k], v)
    sharded = (tmp_path / "ck" / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes == 4096)


def test_shared_storage_is_saved(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    save_weights_folder(
        tmp_path / "ck",
        format=DIT_EXPORT_FORMAT,
        architecture="a",
        config={},
        state_dict={"a": w, "b": w},
    )
    wf = load_weights_folder(tmp_path / "ck", format=DIT_EXPORT_FORMAT)
    assert torch.equal(wf.state_dict["a"], wf.state_dict["b"])


def test_overwrite_is_atomic_and_failure_keeps_old(tmp_path: Path) -> None:
    p = tmp_path / "ck"
    save_weights_folder(
        p, format=DIT_EXPORT_FORMAT, architecture="a", config={"v": 1}, state_dict=_state()
    )
    with pytest.raises(ValueError, match=r"state_dict\['bad'\] is str"):
        save_weights_folder(
            p,
            format=DIT_EXPORT_FORMAT,
            architecture="a",
            config={"v": 2},
            state_dict={**_state(), "bad": "x"},
        )
    assert load_weights_folder(p, format=DIT_EXPORT_FORMAT).config == {"v": 1}
    save_weights_folder(
        p, format=DIT_EXPORT_FORMAT, architecture="a", config={"v": 3}, state_dict=_state()
    )
    assert load_weights_folder(p, format=DIT_EXPORT_FORMAT).config == {"v": 3}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ck"]


def test_wrong_format_and_version(tmp_path: Path) -> None:
    p = tmp_path / "ck"
    save_weights_folder(
        p, format=VAE_CHECKPOINT_FORMAT, architecture="a", config={}, state_dict=_state()
    )
    with pytest.raises(VersionError, match="expected 'mugv.dit-export'"):
        load_weights_folder(p, format=DIT_EXPORT_FORMAT)
    meta = json.loads((p / "config.json").read_text())
    meta["version"] = "2.0"
    (p / "config.json").write_text(json.dumps(meta))
    with pytest.raises(VersionError, match=r"version 2\.0 is a newer major"):
        load_weights_folder(p, format=VAE_CHECKPOINT_FORMAT)


def test_missing_config(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(FormatError, match="no config.json"):
        load_weights_folder(tmp_path / "x", format=VAE_CHECKPOINT_FORMAT)


def test_corrupt_and_truncated_weights(tmp_path: Path) -> None:
    p = tmp_path / "ck"
    save_weights_folder(
        p, format=VAE_CHECKPOINT_FORMAT, architecture="a", config={}, state_dict=_state()
    )
    f = p / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-10] + b"\x00" * 10)
    with pytest.raises(ChecksumError, match=r"model\.safetensors: sha256"):
        load_weights_folder(p, format=VAE_CHECKPOINT_FORMAT)
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShardError, match="unreadable safetensors"):
        load_weights_folder(p, format=VAE_CHECKPOINT_FORMAT, verify=False)


def test_unknown_format_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown weights format"):
        save_weights_folder(
            tmp_path, format="mugv.nope", architecture="a", config={}, state_dict={}
        )


def test_check_state_dict_fits_names_what_does_not_fit() -> None:
    from mugv_formats.weights import check_state_dict_fits

    expected = {"a": (2, 3), "b": (4,)}
    check_state_dict_fits({"a": torch.zeros((2, 3)), "b": torch.zeros(4)}, expected, where="w")
    with pytest.raises(ValueError, match=r"^w: missing \['b'\] \(1\), unexpected \['c'\] \(1\)$"):
        check_state_dict_fits({"a": torch.zeros((2, 3)), "c": torch.zeros(1)}, expected, where="w")
    with pytest.raises(ValueError, match=r"^w: b: shape \(5,\), expected \(4,\)$"):
        check_state_dict_fits({"a": torch.zeros((2, 3)), "b": torch.zeros(5)}, expected, where="w")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("max_shard_bytes", [5 << 30, 4096])
def test_check_finite_names_folder_file_and_tensor(
    tmp_path: Path, bad: float, max_shard_bytes: int
) -> None:
    """Issue 23: one finite-weights check, in the loader: a NaN / inf in any float tensor
    (bf16 too) is refused naming the folder, the .safetensors file that holds it (of a
    sharded folder: the right shard) and the tensor; integers are not checked."""
    from mugv_formats import NonFiniteWeightsError

    sd = _state()
    sd["enc.b"][5] = bad
    folder = tmp_path / "ck"
    save_weights_folder(
        folder,
        format=VAE_CHECKPOINT_FORMAT,
        architecture="MUGVAE",
        config={},
        state_dict=sd,
        max_shard_bytes=max_shard_bytes,
        producer="t",
    )
    assert load_weights_folder(folder, format=VAE_CHECKPOINT_FORMAT).state_dict  # off: loads
    index = folder / "model.safetensors.index.json"
    if index.exists():
        holder = json.loads(index.read_text())["weight_map"]["enc.b"]
    else:
        holder = "model.safetensors"
    with pytest.raises(NonFiniteWeightsError) as info:
        load_weights_folder(folder, format=VAE_CHECKPOINT_FORMAT, check_finite=True)
    msg = str(info.value)
    assert msg.startswith(f"{VAE_CHECKPOINT_FORMAT} folder {folder}: tensor enc.b in "), msg
    assert f"in {folder / holder} has non-finite values" in msg, msg
    nan, inf = (1, 0) if bad != bad else (0, 1)
    assert f"({nan} NaN, {inf} inf of 64)" in msg and "\n" not in msg, msg
    assert isinstance(info.value, FormatError)
    clean = _state()
    save_weights_folder(
        tmp_path / "ok", format=VAE_CHECKPOINT_FORMAT, architecture="MUGVAE", config={},
        state_dict=clean, producer="t",
    )  # fmt: skip
    wf = load_weights_folder(tmp_path / "ok", format=VAE_CHECKPOINT_FORMAT, check_finite=True)
    assert all(torch.equal(wf.state_dict[k], v) for k, v in clean.items())
