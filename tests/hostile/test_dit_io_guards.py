"""mugv-dit's inputs and outputs under attack (issue 23): no code from dataset metadata or a
loader-state file, writers that never replace what they did not write, one run per output
folder, no writes through links planted in a run folder, every numeric setting range-checked,
a run folder that is a file or read-only is a one-line error."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from hostile_util import dit_config, make_latents, numeric_fields_without_range

pytest.importorskip("megatron.core")


def plant_code_in_nv_meta(ds, marker) -> None:
    """A ``dataset.yaml`` naming a callable that energon would import and call: ``open``
    with mode ``w`` creates ``marker`` (harmless proof of execution)."""
    (ds / ".nv-meta" / "dataset.yaml").write_text(
        yaml.safe_dump(
            {"__module__": "builtins", "__class__": "open", "file": str(marker), "mode": "w"}
        )
    )


def _energon_loader(ds):
    from mugv_dit.data.energon import EnergonLatentLoader
    from mugv_dit.data.plan import BucketSampler, LatentIndex

    index = LatentIndex(ds)
    sampler = BucketSampler(
        index, tokens_per_batch=64, max_batch_size=4, micro_batches_per_step=1,
        patch=(1, 2, 2), seed=0,
    )  # fmt: skip
    return EnergonLatentLoader(ds, index=index, sampler=sampler, dp_rank=0, dp_size=1)


def test_code_named_by_nv_meta_is_never_run_by_training(tmp_path, capsys, megatron_single):
    """Severe 1: `train` with data.loader=energon on a dataset whose .nv-meta names a
    callable: one line naming the file, and the callable never runs."""
    from mugv_dit.cli import main

    ds = make_latents(tmp_path / "lat")
    marker = tmp_path / "PWNED"
    plant_code_in_nv_meta(ds, marker)
    assert main(["train", str(dit_config(tmp_path, ds, "run"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset.yaml" in err and "not allowed" in err, err
    assert not marker.exists()


@pytest.mark.parametrize(
    "plant",
    [
        ("split.yaml", {"split_parts": {"train": ["shard-000000.tar"]},
                        "sample_loader": "os:system"}),
        ("split.yaml", {"split_parts": {"train": ["../../elsewhere/shard.tar"]}}),
        ("extra.py", None),
    ],
    ids=["split-callable", "split-outside", "unknown-file"],
)  # fmt: skip
def test_any_other_nv_meta_content_is_refused_before_energon(tmp_path, plant, megatron_single):
    """The loader checks the whole .nv-meta before energon sees it (other cases of the class:
    a sample_loader callable in split.yaml, a shard outside the folder, an unknown file)."""
    from mugv_formats.energon import NvMetaError

    ds = make_latents(tmp_path / "lat")
    name, data = plant
    (ds / ".nv-meta" / name).write_text("print(1)\n" if data is None else yaml.safe_dump(data))
    with pytest.raises(NvMetaError, match=name.replace(".", r"\.")):
        _energon_loader(ds)


def test_nv_meta_changed_after_start_is_refused_before_energon_reads_it(tmp_path, megatron_single):
    """The check runs again right before each energon dataset is opened."""
    from mugv_dit.config import StageConfig
    from mugv_formats.energon import NvMetaError

    ds = make_latents(tmp_path / "lat")
    loader = _energon_loader(ds)
    marker = tmp_path / "PWNED"
    plant_code_in_nv_meta(ds, marker)
    with pytest.raises(NvMetaError, match=r"dataset\.yaml"):
        loader.next_batches(0, 0, StageConfig(name="a", steps=4), 0.0, 1, "cpu")
    assert not marker.exists()


def _state_naming(cls_name: str) -> dict:
    return {
        "stage": 0,
        "reservoirs": [],
        "dropped": 0,
        "loader": {"__mugv_energon_class__": cls_name, "fields": {}},
    }


@pytest.mark.parametrize(
    "name",
    [
        "megatron.energon.tools.prepare:PrepareConfig",  # an energon module, not a state class
        "megatron.energon.flavors.webdataset.tar_patcher:TarPatcher",
        "os:system",
        "builtins:open",
    ],
)
def test_loader_state_file_cannot_choose_a_module_to_import(tmp_path, name):
    """Item 1, the second code-from-file path: a loader-state file names the classes to
    rebuild; only energon's state classes (an allow-list) are, and the module the file names
    is never imported (the old prefix check imported any megatron.energon.* module)."""
    from mugv_dit.data.energon import load_plain_state

    module = name.partition(":")[0]
    was_loaded = module in sys.modules
    path = tmp_path / "rank_00000.pt"
    torch.save(_state_naming(name), path)
    with pytest.raises(ValueError, match=r"rank_00000\.pt: energon loader state names class"):
        load_plain_state(path)
    assert was_loaded or module not in sys.modules, f"{module} was imported"


def test_loader_state_with_wrong_fields_is_a_named_error(tmp_path):
    from mugv_dit.data.energon import load_plain_state

    state = _state_naming("megatron.energon.savable_loader:SavableDataLoaderState")
    state["loader"]["fields"] = {"no_such_field": 1}
    path = tmp_path / "rank_00000.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"rank_00000\.pt: invalid energon loader state"):
        load_plain_state(path)


def test_loader_state_with_workers_round_trips(tmp_path, megatron_single):
    """With loader workers energon's state holds RNG states (tensors, numpy arrays, its
    SystemRngState): it is saved as plain data and restored to an equal state (saving it
    used to fail with 'not plain data')."""
    from mugv_dit.config import StageConfig
    from mugv_dit.data.energon import EnergonLatentLoader, load_plain_state, state_to_plain
    from mugv_dit.data.plan import BucketSampler, LatentIndex

    ds = make_latents(tmp_path / "lat")
    index = LatentIndex(ds)
    sampler = BucketSampler(
        index, tokens_per_batch=64, max_batch_size=4, micro_batches_per_step=1,
        patch=(1, 2, 2), seed=0,
    )  # fmt: skip
    loader = EnergonLatentLoader(
        ds, index=index, sampler=sampler, dp_rank=0, dp_size=1, num_workers=1
    )
    for step in range(2):
        loader.next_batches(step, 0, StageConfig(name="a", steps=4), 0.0, 1, "cpu")
    loader.save(tmp_path / "state.pt")
    restored = load_plain_state(tmp_path / "state.pt")
    again = state_to_plain(restored)
    torch.save(again, tmp_path / "again.pt")
    first = torch.load(tmp_path / "state.pt", weights_only=True)
    second = torch.load(tmp_path / "again.pt", weights_only=True)
    assert repr(first) == repr(second)


# -- item 5: every numeric setting has a declared range ------------------------------------
def test_every_numeric_dit_config_field_declares_its_range():
    from mugv_dit.config import RunConfig, StageConfig

    assert numeric_fields_without_range(RunConfig) == []
    assert numeric_fields_without_range(StageConfig, "curriculum[].") == []


@pytest.mark.parametrize(
    "setting",
    [
        "train.ema_decay=1.0",
        "train.ema_decay=-0.5",
        "train.save_every=-1",
        "train.log_every=0",
        "train.adam_beta1=1.0",
        "train.adam_beta2=-0.1",
        "train.adam_eps=0",
        "train.weight_decay=-1",
        "train.clip_grad=-1",
        "train.max_skipped_steps=-1",
        "train.seed=-1",
        "train.keep_checkpoints=-2",
        "train.peak_tflops=0",
        "data.tokens_per_batch=0",
        "data.max_batch_size=0",
        "data.num_workers=-1",
        "objective.caption_dropout=1.5",
        "objective.logit_normal_std=0",
        "objective.continuation_max_frames=0",
        "objective.task_ratios={t2v: -1, i2v: 2}",
        "model.hidden_size=0",
        "model.norm_eps=0",
        "model.patch_size=[1, 0, 2]",
        "model.timestep_scale=-1",
        "parallel.tensor_parallel=0",
        "train.adam_eps=nan",
        "train.clip_grad=inf",
        "curriculum.0.lr=0",
        "curriculum.0.lr=nan",
        "curriculum.0.warmup_steps=-1",
        "curriculum.0.min_lr=-1e-5",
        "curriculum.0.image_share_start=2",
        "curriculum.0.max_frames=0",
    ],
)
def test_out_of_range_setting_is_one_line_exit_2(tmp_path, capsys, setting):
    """Item 5: an out-of-range value given with --set stops `mugv-dit train` before any work,
    with one line naming the field (a decay of 1 froze the EMA, a negative interval crashed
    later with a traceback, a NaN learning rate trained garbage)."""
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, tmp_path / "unused", "run")
    assert main(["train", str(cfg), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    field = setting.split("=")[0].rsplit(".", 1)[-1]
    assert len(err.splitlines()) == 1 and field in err, err
    assert not (tmp_path / "run").exists()


# -- items 3, 4, 6: the run folder -----------------------------------------------------------
def test_second_run_on_the_same_output_is_refused_naming_the_holder(
    tmp_path, capsys, megatron_single
):
    """Item 3: while a run holds its output folder, `train` on it stops with one line naming
    the holder (pid), and writes nothing there."""
    import os

    from mugv_dit.cli import main
    from mugv_formats.outputs import output_lock

    cfg = dit_config(tmp_path, make_latents(tmp_path / "lat"), "run")
    with output_lock(tmp_path / "run", "output_dir"):
        assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in use by another run" in err, err
    assert f"pid {os.getpid()}" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".mugv-lock"]
    assert main(["train", str(cfg), "--max-steps", "1"]) == 0  # free again: runs


@pytest.mark.parametrize(
    "entry", ["metrics.jsonl", "resolved_config.yaml", "tensorboard", "checkpoints"]
)
def test_links_planted_in_the_run_folder_are_not_followed(tmp_path, capsys, megatron_single, entry):
    """Item 4: a symbolic link planted at a file or folder the trainer writes (logs,
    metrics, resolved config, checkpoints, TensorBoard) is refused in one line; nothing is
    written through it."""
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, make_latents(tmp_path / "lat"), "run", tensorboard=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "victim"
    if entry in ("tensorboard", "checkpoints"):
        target.mkdir()
    else:
        target.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / entry).symlink_to(target)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "symbolic link" in err and entry in err, err
    if target.is_dir():
        assert list(target.iterdir()) == []
    else:
        assert target.read_text() == "keep me\n"


def test_run_folder_that_is_a_file_is_one_line(tmp_path, capsys, megatron_single):
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, make_latents(tmp_path / "lat"), "run")
    (tmp_path / "run").write_text("not a folder\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err and "Traceback" not in err, err


def test_run_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, megatron_single):
    """Item 6: a read-only place for the run folder is one line (as root, whom permissions
    do not stop, a folder under sysfs is used)."""
    import os

    from mugv_dit.cli import main

    if os.geteuid() == 0:
        out = "/sys/kernel/mugv-hostile-run"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        out = str(ro / "run")
    cfg = dit_config(tmp_path, make_latents(tmp_path / "lat"), "run")
    assert main(["train", str(cfg), "--set", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert (len(err.splitlines()) == 1 and "mugv-hostile-run" in err) or "ro/run" in err, err


def test_partial_checkpoints_are_cleaned_at_the_next_start(tmp_path, megatron_single):
    """Item 6: what a killed save or prune left (a step folder `latest` does not name, a
    `.deleting-step_*` folder, a `.latest.*.tmp` file) is removed at the next start; files of
    other names in the checkpoints folder are left alone; the run then completes."""
    from mugv_dit.cli import main

    cfg = dit_config(tmp_path, make_latents(tmp_path / "lat"), "run", steps=3)
    assert main(["train", str(cfg), "--max-steps", "1"]) == 0
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_0000001"
    partial = ckpts / "step_0000002"  # a save killed before `latest` moved (no .metadata)
    partial.mkdir()
    (partial / "__7_7.distcp").write_bytes(b"half")
    ahead = ckpts / "step_0000009"  # complete-looking, but newer than `latest`
    ahead.mkdir()
    (ahead / ".metadata").write_bytes(b"x")
    trash = ckpts / ".deleting-step_0000000-4242"
    trash.mkdir()
    (ckpts / ".latest.abc123.tmp").write_text("step_0000002\n")
    mine = [ckpts / "notes.txt", ckpts / "step_0000001.bak", ckpts / ".deleting-notes"]
    mine[0].write_text("user notes\n")
    mine[1].mkdir()
    mine[2].mkdir()
    assert main(["train", str(cfg)]) == 0
    assert not ahead.exists() and not trash.exists()
    assert not (ckpts / ".latest.abc123.tmp").exists()
    assert all(p.exists() for p in mine)
    assert (ckpts / "latest").read_text().strip() == "step_0000003"
    assert not (ckpts / "step_0000002" / "__7_7.distcp").exists()  # rewritten, not merged


# -- item 2: writers never replace what they did not write -------------------------------
def _tree(folder):
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def random_export(tmp_path, megatron_single):
    from mugv_dit import write_random_export
    from mugv_dit.config import model_preset

    return write_random_export(model_preset("debug"), tmp_path / "export", seed=0)


def test_writers_refuse_what_they_did_not_write(tmp_path, capsys, random_export):
    """Severe 2: `widen` (as every export writer: export, import-original, ema-reconstruct,
    write_random_export, embed-text through the same claim) refuses a run folder, a user's
    folder, a file, its own input, a folder inside its input or holding it; one line, exit
    2, nothing there changed."""
    from mugv_dit.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "resolved_config.yaml").write_text("output_dir: run\n")
    user = tmp_path / "videos"
    user.mkdir()
    (user / "holiday.mp4").write_bytes(b"mine")
    afile = tmp_path / "file.bin"
    afile.write_bytes(b"x")
    for out, flags in [
        (run, ["--overwrite"]),
        (user, ["--overwrite"]),
        (afile, ["--overwrite"]),
        (random_export, ["--overwrite"]),
        (random_export / "nested", []),
        (tmp_path, []),
    ]:
        before = {p: _tree(p) for p in (run, user, random_export)}
        assert main(["widen", "--input", str(random_export), "--output", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err, (out, err)
        assert {p: _tree(p) for p in before} == before
        assert afile.read_bytes() == b"x"


def test_an_export_is_replaced_only_with_overwrite(tmp_path, capsys, random_export):
    from mugv_dit.cli import main
    from mugv_dit.interop.export import load_export

    out = tmp_path / "wide"
    argv = ["widen", "--input", str(random_export), "--output", str(out)]
    assert main(argv) == 0
    first = _tree(out)
    assert main([*argv, "--seed", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err and _tree(out) == first
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert _tree(out) != first and load_export(out)[0].hidden_size == 96
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_random_export_refuses_a_folder_of_another_kind(tmp_path, random_export):
    from mugv_dit import write_random_export
    from mugv_dit.config import model_preset
    from mugv_formats.outputs import OutputError

    lat = make_latents(tmp_path / "lat")
    before = _tree(lat)
    with pytest.raises(OutputError, match="mugv.latent-shards"):
        write_random_export(model_preset("debug"), lat, seed=0, overwrite=True)
    assert _tree(lat) == before
