"""DiT trainer inputs (defects 2, 6, 9): the latent contract is checked by its consumer, user
errors name their field in one line, a SIGKILLed trainer leaves no process behind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from hostile_util import (
    bump_one_value,
    clean_env,
    dit_config,
    kill_and_check_no_leak,
    make_latents,
    rewrite_members,
)

pytest.importorskip("megatron.core")


def test_raw_latents_are_refused_by_name(tmp_path, megatron_single):
    from mugv_dit.data.plan import LatentIndex

    ds = make_latents(tmp_path / "raw", normalized=False)
    with pytest.raises(ValueError, match=r"dataset\.json: latents_normalized is false"):
        LatentIndex(ds)


@pytest.mark.parametrize(
    "member", ["../../outside.npy", "/etc/evil.npy", "s0000.latents.npy", "link"], ids=str
)
def test_plan_loader_refuses_unsafe_or_doubled_members(tmp_path, member):
    """The default (``plan``) loader reads samples by offset through mugv-formats' indexed
    reader: a shard holding a member outside the dataset, an absolute path, a second copy of a
    sample's member or a link is refused by name, as a streaming read refuses it (the DiT's
    own tar parser used to skip such members and read the rest)."""
    import io
    import tarfile

    from mugv_dit.data.plan import LatentIndex
    from mugv_formats import CorruptShardError

    ds = make_latents(tmp_path / "lat", n=3)
    with tarfile.open(ds / "shard-000000.tar", "a") as t:
        info = tarfile.TarInfo("s0009.latents.npy" if member == "link" else member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(info)
        else:
            info.size = 3
            t.addfile(info, io.BytesIO(b"bad"))
    index = LatentIndex(ds)
    with pytest.raises(CorruptShardError, match=r"shard-000000\.tar: member .*(refused|twice)"):
        index.load(1)


def test_plan_loader_refuses_changed_latent_bytes(tmp_path):
    from mugv_dit.data.plan import LatentIndex
    from mugv_formats import ChecksumError

    ds = make_latents(tmp_path / "lat", n=3)
    rewrite_members(
        ds / "shard-000000.tar",
        lambda name, data: bump_one_value(data) if name == "s0001.latents.npy" else data,
    )
    index = LatentIndex(ds)
    index.load("s0000")
    with pytest.raises(ChecksumError, match=r"member s0001\.latents\.npy fails its sha256"):
        index.load(1)


def test_channel_count_mismatch_is_refused_by_name(tmp_path, capsys, megatron_single):
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, make_latents(tmp_path / "c16", channels=16), "run")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "latent_channels=16" in err and "in_channels" in err


def test_latents_of_another_vae_are_refused_by_name(tmp_path, capsys, megatron_single):
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, make_latents(tmp_path / "lat", vae="vae-B"), "run")
    assert main(["train", str(cfg), "--set", "data.vae_checkpoint_id=vae-A"]) == 2
    err = capsys.readouterr().err
    assert "'vae-B'" in err and "data.vae_checkpoint_id='vae-A'" in err


def test_resume_on_latents_of_another_vae_is_refused(tmp_path, capsys, megatron_single):
    """A run started on VAE A's latents cannot resume on VAE B's (latent spaces differ), even
    when the config names no VAE."""
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, make_latents(tmp_path / "a", vae="vae-A"), "run", steps=1)
    assert main(["train", str(cfg)]) == 0
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["path"] = str(make_latents(tmp_path / "b", vae="vae-B"))
    raw["curriculum"][0]["steps"] = 2
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "VAE 'vae-A'" in err and "VAE 'vae-B'" in err
    raw["data"]["path"] = str(tmp_path / "a")  # the original latents: resumes
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg)]) == 0


def test_negative_learning_rate_names_the_field(tmp_path, capsys):
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, tmp_path / "unused", "run")
    raw = yaml.safe_load(cfg.read_text())
    raw["curriculum"][0]["lr"] = -1e-3
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "curriculum[0]" in err and ".lr = -0.001" in err and len(err.splitlines()) == 1


def test_invalid_config_value_is_one_line(tmp_path, capsys):
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, tmp_path / "unused", "run")
    assert main(["train", str(cfg), "--set", "curriculum=[{name: a, steps: -3}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "steps" in err and len(err.splitlines()) == 1


def test_missing_run_config_is_one_line(tmp_path, capsys):
    from mugv_dit.cli import main

    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_unreadable_checkpoint_metadata_is_a_named_error(tmp_path):
    from mugv_dit.checkpoint import UnsafeCheckpointError, read_checkpoint_metadata

    (tmp_path / ".metadata").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: unreadable checkpoint metadata"):
        read_checkpoint_metadata(tmp_path / ".metadata")


@pytest.mark.slow  # ~40 s: a real `mugv-dit train` process
def test_sigkilled_trainer_leaves_no_process(tmp_path):
    """Defect 2: Megatron's checkpoint-writer manager process dies with the trainer."""
    cfg = dit_config(tmp_path, make_latents(tmp_path / "latents"), "run", steps=200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mugv_dit.cli", "train", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        start_new_session=True,
    )
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not latest.is_file():
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before it could be killed"
    left = kill_and_check_no_leak(proc)
    assert not left, f"processes left after SIGKILL of mugv-dit train: {sorted(left)}"


def _read_through_energon(ds) -> None:
    """Pull four steps of batches from ``ds`` through the energon loader."""
    from mugv_dit.config import StageConfig
    from mugv_dit.data.energon import EnergonLatentLoader
    from mugv_dit.data.plan import BucketSampler, LatentIndex

    index = LatentIndex(ds)
    sampler = BucketSampler(
        index, tokens_per_batch=64, max_batch_size=4, micro_batches_per_step=1,
        patch=(1, 2, 2), seed=0,
    )  # fmt: skip
    loader = EnergonLatentLoader(ds, index=index, sampler=sampler, dp_rank=0, dp_size=1)
    for step in range(4):
        loader.next_batches(step, 0, StageConfig(name="a", steps=4), 0.0, 1, "cpu")


def test_changed_record_in_an_energon_shard_is_refused(tmp_path, megatron_single):
    """Defect 3 on the energon path: fps 24 -> 2490 in a shard's KEY.json is refused."""
    from mugv_formats import ChecksumError

    ds = make_latents(tmp_path / "lat")
    rewrite_members(
        ds / "shard-000000.tar",
        lambda name, data: (
            data.replace(b'"fps":24.0', b'"fps":2490.0') if name.endswith(".json") else data
        ),
    )
    with pytest.raises(ChecksumError, match=r"fps is 2490\.0 in the shard, 24\.0 in the manifest"):
        _read_through_energon(ds)


def test_changed_latent_bytes_in_an_energon_shard_are_refused(tmp_path, megatron_single):
    """Every member is checksummed on the energon path too: one flipped value inside a
    ``.latents.npy`` (shape and record untouched) is refused by name."""
    from mugv_formats import ChecksumError

    ds = make_latents(tmp_path / "lat", n=3)  # one shard holds all three samples
    rewrite_members(
        ds / "shard-000000.tar",
        lambda name, data: bump_one_value(data) if name.endswith(".latents.npy") else data,
    )
    with pytest.raises(ChecksumError, match=r"member s000\d\.latents\.npy fails its sha256"):
        _read_through_energon(ds)


def test_config_that_is_not_yaml_is_one_line(tmp_path, capsys):
    from mugv_dit.cli import main

    (tmp_path / "bad.yaml").write_text("a: [\n")
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid YAML" in err and len(err.splitlines()) == 1
