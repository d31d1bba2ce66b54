"""The pipeline's stages: inputs and captions, keys that follow the inputs, and every command
naming a console script that this environment has."""

from __future__ import annotations

import os
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml
from mugv.config import load_config
from mugv.layout import STAGE_NAMES, RunLayout
from mugv.runner import stage_key
from mugv.stages import build_stages, caption_for, step_commands


def _cfg(tmp_path: Path, *extra: str):
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    (videos / "my_bike-ride.mp4").write_bytes(b"x" * 10)
    (videos / "notes.txt").write_text("not a video")
    return load_config(None, ["curate.samples=false", f"curate.inputs=[{videos}]", *extra])


def test_stages_in_order_and_every_command_exists(tmp_path):
    stages = build_stages(_cfg(tmp_path), RunLayout(tmp_path / "run"))
    assert [s.name for s in stages] == STAGE_NAMES
    for stage in stages:
        for step in stage.steps:
            for cmd in [step.cmd] * (step.cmd is not None) + step_commands(step):
                assert Path(cmd[0]).is_file(), (stage.name, cmd[0])
        assert all(str(p).startswith(str(tmp_path / "run")) for p in stage.outputs)
    no_mem = build_stages(_cfg(tmp_path, "memorise.enabled=false"), RunLayout(tmp_path / "run"))
    assert "memorise" not in [s.name for s in no_mem]


def test_inputs_captions_and_keys(tmp_path):
    cfg = _cfg(tmp_path)
    curate = build_stages(cfg, RunLayout(tmp_path / "run"))[0]
    assert [Path(v[0]).name for v in curate.settings["videos"]] == ["my_bike-ride.mp4"]
    assert curate.settings["captions"] == {"my_bike-ride.mp4": "a video of my bike ride"}
    assert caption_for(Path("bikes.mp4"), cfg.curate.captions) == cfg.curate.captions["bikes.mp4"]

    before = stage_key(curate, "")
    video = tmp_path / "videos" / "my_bike-ride.mp4"
    video.write_bytes(b"y" * 20)  # the input changed: the curate stage (and all after) redo
    os.utime(video, (1, 1))
    assert stage_key(build_stages(cfg, RunLayout(tmp_path / "run"))[0], "") != before


def test_trainer_stages_chain_their_exports(tmp_path):
    """dit -> sft -> dpo / kto: each trainer's config starts from the export the stage before
    it lists as an output, and each stage exports what its config trains."""
    run = RunLayout(tmp_path / "run")
    stages = {s.name: s for s in build_stages(_cfg(tmp_path), run)}
    configs = {}
    for name in ("dit", "sft", "dpo", "kto"):
        for step in stages[name].steps:
            if step.title == "config":
                step.fn()
        configs[name] = yaml.safe_load((tmp_path / "run" / "configs" / f"{name}.yaml").read_text())
        assert configs[name] == stages[name].settings["config"]
        *_, train_dir, export_dir = stages[name].outputs
        assert configs[name]["output_dir"] == str(train_dir)
        # the trainer on that config, then its export, in one process
        *_, train, export = step_commands(stages[name].steps[-1])
        assert train[1:] == [{"dit": "train"}.get(name, name), str(run.config(name))]
        assert export[1:] == ["export", "--run", str(train_dir), "--output", str(export_dir)]
    exported = {name: str(stages[name].outputs[-1]) for name in configs}
    assert configs["sft"]["train"]["init_from"] == exported["dit"]
    for name in ("dpo", "kto"):
        assert configs[name]["train"]["init_from"] == exported["sft"]
        assert configs[name]["align"]["reference_from"] == exported["sft"]
    assert configs["kto"]["align"]["mode"] == "kto"
    # the user's own sections survive the paths mugv fills in
    assert configs["dit"]["curriculum"] == load_config().dit.config["curriculum"]


def test_run_layout_names_distinct_paths_under_its_root(tmp_path):
    run = RunLayout(tmp_path / "run")
    names = [n for n, v in vars(RunLayout).items() if type(v).__name__ == "_Under"]
    paths = [getattr(run, n) for n in names]
    assert len(names) > 40 and len(set(paths)) == len(paths)
    assert all(p.is_relative_to(run.root) and p != run.root for p in paths)
    assert run.marker("dit") == run.done / "dit.json" and run.config("dit").parent == run.configs
    with pytest.raises(FrozenInstanceError):
        run.root = tmp_path  # type: ignore[misc]


def test_the_lora_variant_of_dpo(tmp_path):
    """align.dpo_lora switches the DPO stage to adapters on the SFT export: its config gets
    the lora section and no separate reference (the base with its adapters off is the
    reference), its export folds the adapters in; the report names the variant that ran."""
    from mugv.report import dpo_variant

    run = RunLayout(tmp_path / "run")
    plain = {s.name: s for s in build_stages(_cfg(tmp_path), run)}["dpo"]
    cfg = _cfg(tmp_path, "align.dpo_lora={rank: 4, alpha: 8.0}")
    stage = {s.name: s for s in build_stages(cfg, run)}["dpo"]
    config = stage.settings["config"]
    assert config["lora"] == {"rank": 4, "alpha": 8.0}
    assert "reference_from" not in config["align"]
    assert config["train"]["init_from"] == plain.settings["config"]["train"]["init_from"]
    export, plain_export = step_commands(stage.steps[-1])[-1], step_commands(plain.steps[-1])[-1]
    assert export[-1] == "--merge-lora" and "--merge-lora" not in plain_export
    assert stage_key(stage, "") != stage_key(plain, "")  # switching it redoes the stage

    assert dpo_variant(run) == "not run"
    for step in stage.steps:
        if step.title == "config":
            step.fn()
    assert dpo_variant(run).startswith("LoRA (rank 4, alpha 8.0)")
    for step in plain.steps:
        if step.title == "config":
            step.fn()
    assert dpo_variant(run).startswith("full-parameter")


def _ancestors(stages: dict, name: str) -> set[str]:
    out, todo = set(), list(stages[name].needs)
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo += stages[n].needs
    return out


def _run_paths(value, root: Path) -> list[Path]:
    """Every path under ``root`` named in ``value`` (strings, lists, dicts, nested)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _run_paths(v, root)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _run_paths(v, root)]
    if isinstance(value, str) and value.startswith(str(root) + os.sep):
        return [Path(value)]
    return []


def test_each_stage_needs_the_stages_that_write_what_it_reads(tmp_path):
    """Stages run side by side where neither needs the other: every run path a stage's
    commands and settings name (and the tools that take ``--run`` read, found in their
    source) is written by the stage itself or by a stage it (transitively) needs."""
    import inspect
    import re

    from mugv import memorise, tools

    run = RunLayout(tmp_path / "run")
    stages = {s.name: s for s in build_stages(_cfg(tmp_path), run)}
    assert stages["report"].needs == tuple(STAGE_NAMES[:-1])

    def producer(path: Path) -> str | None:
        for s in stages.values():
            if any(path == o or path.is_relative_to(o) for o in [*s.outputs, *s.scratch]):
                return s.name
        return None

    def used_by(*functions) -> list[Path]:  # run.NAME in the source of tools taking --run
        names = {m for f in functions for m in re.findall(r"\brun\.(\w+)", inspect.getsource(f))}
        # run.config(STAGE) is a stage's config file, written by that stage
        paths = [run.configs if n == "config" else getattr(run, n) for n in names]
        return [p for p in paths if isinstance(p, Path)]

    reads = {name: _run_paths([s.settings, [step_commands(st) for st in s.steps]], run.root)
             for name, s in stages.items()}  # fmt: skip
    reads["recon"] += used_by(tools.recon)
    reads["memorise"] += used_by(memorise.run_memorise, memorise.memorise_config, memorise._sample)
    assert run.vae in reads["memorise"] and run.text_encoder in reads["memorise"]
    for name, paths in reads.items():
        allowed = _ancestors(stages, name) | {name}
        for path in paths:
            assert producer(path) in allowed, (name, path, producer(path))
    # what runs beside what: recon beside latents, memorise beside the DiT chain, kto beside dpo
    assert "memorise" not in _ancestors(stages, "generate")
    assert {"dit", "samples", "sft", "dpo"}.isdisjoint(_ancestors(stages, "memorise"))
    assert "kto" not in _ancestors(stages, "generate") and "recon" not in _ancestors(stages, "dit")


def test_mugv_stages_lists_who_waits_for_whom(capsys):
    from mugv.cli import main

    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert "memorise   waits for vae, latents" in out and "curate     waits for nothing" in out
    listed = [ln.split()[0] for ln in out.splitlines() if " waits for " in ln and ln[:1] != " "]
    assert listed[-len(STAGE_NAMES) :] == STAGE_NAMES


def test_the_vae_trainer_measures_the_latent_stats_at_the_encode_size(tmp_path):
    """One mugv-vae process: its train config (valid for mugv-vae) asks for the latent
    mean/std at the size the latents stage encodes; latent_stats=false leaves it out."""
    from mugv_vae.train.config import load_train_config

    for on in (True, False):
        run = RunLayout(tmp_path / str(on))
        cfg = _cfg(tmp_path, f"vae.latent_stats={str(on).lower()}", "encode.resolution=32x48",
                   "encode.frames=9")  # fmt: skip
        vae = {s.name: s for s in build_stages(cfg, run)}["vae"]
        vae.steps[0].fn()  # writes configs/vae.yaml
        train = load_train_config(run.config("vae"))
        assert train.data.clips == str(run.clips) and train.output == str(run.vae_train)
        if on:
            assert (train.latent_stats.resolution, train.latent_stats.frames) == ("32x48", 9)
        else:
            assert train.latent_stats is None
        assert [s.cmd[1] for s in vae.steps if s.cmd] == ["train"]
