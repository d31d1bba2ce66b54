"""The run folder's layout: every path a run writes or reads, named once.

``RunLayout(root)`` is a frozen value; each attribute is a path under ``root``. The stages
(:mod:`mugv.stages`), the runner's markers and logs, the memorisation check and the report
all take their paths from it, so a folder is renamed in one place.

A stage package's own files inside its output folder (a clip shard's ``summary.json``, a
trainer's ``metrics.jsonl``) belong to that package's format, not to this layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE_NAMES = [
    "curate", "text", "vae", "recon", "latents", "dit", "samples", "sft", "dpo", "kto", "generate",
    "memorise", "report",
]  # fmt: skip
"""The pipeline's stages in order (each has a marker ``.mugv/done/NAME.json`` and a log)."""


class _Under:
    """A path of the run folder: ``layout.root / relative`` (read-only, on the class a name)."""

    def __init__(self, relative: str):
        self.relative = relative

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, layout: RunLayout | None, owner: type | None = None) -> Path:
        if layout is None:
            raise AttributeError(f"RunLayout.{self.name} is a path of a RunLayout instance")
        return layout.root / self.relative


@dataclass(frozen=True)
class RunLayout:
    """Every path of the run folder ``root`` (absolute where the pipeline builds it)."""

    root: Path

    # the run itself
    resolved_config = _Under("resolved_config.yaml")
    timings = _Under("timings.json")
    logs = _Under("logs")
    done = _Under(".mugv/done")
    owner = _Under(".mugv/run.json")  # the ownership marker (mugv.ownership)
    claims = _Under(".mugv/claims")  # what each stage's attempt may write (mugv.ownership)
    configs = _Under("configs")  # the stage configs mugv writes (NAME.yaml)
    # curate
    curate = _Under("curate")
    curate_captions = _Under("curate/captions.csv")
    curate_config = _Under("curate/config.yaml")
    curate_inputs = _Under("curate/inputs.txt")
    curate_links = _Under("curate/inputs")  # a link per input video, under a safe name
    clips = _Under("clips")
    # vae, recon
    vae_train = _Under("vae-train")
    vae = _Under("vae")
    vae_partial = _Under("vae.partial")
    recon = _Under("recon")
    recon_partial = _Under("recon.partial")
    recon_table = _Under("recon/recon.json")
    recon_eval = _Under("recon/eval")  # `mugv eval vae` of the demo VAE: vae.json, vae.md
    # latents
    latents = _Under("latents")
    latents_text = _Under("latents-text")
    text_encoder = _Under("text-encoder")  # the text encoder as a folder mugv-infer loads
    text_encoder_partial = _Under("text-encoder.partial")
    # dit
    dit = _Under("dit")
    dit_export = _Under("dit-export")
    # samples -> pairs
    prompts = _Under("prompts.json")
    samples = _Under("samples")
    rdpo = _Under("rdpo")
    rdpo_latents = _Under("rdpo/latents")
    rdpo_prefs = _Under("rdpo/prefs")
    # sft, dpo, kto
    sft = _Under("sft")
    sft_export = _Under("sft-export")
    dpo = _Under("dpo")
    dpo_export = _Under("dpo-export")
    kto_labels = _Under("kto-labels.jsonl")
    kto_prefs = _Under("kto-prefs")
    kto = _Under("kto")
    kto_export = _Under("kto-export")
    # generate
    videos = _Under("videos")
    t2v = _Under("videos/t2v.mp4")
    i2v_first_frame = _Under("videos/i2v_first_frame.png")
    i2v = _Under("videos/i2v.mp4")
    # memorise (mugv.memorise)
    memorise = _Under("memorise")
    memorise_data = _Under("memorise/data")
    memorise_config = _Under("memorise/dit.yaml")
    memorise_run = _Under("memorise/dit")
    memorise_trained = _Under("memorise/trained")
    memorise_untrained = _Under("memorise/untrained")
    memorise_result = _Under("memorise/result.json")
    memorise_target = _Under("memorise/target.mp4")
    memorise_regenerated = _Under("memorise/regenerated.mp4")
    memorise_untrained_video = _Under("memorise/untrained.mp4")
    # report
    report = _Under("report.html")
    report_assets = _Under("report")
    report_partial = _Under("report.partial")

    @staticmethod
    def recon_pair(key: str) -> tuple[str, str]:
        """File names, inside ``recon``, of clip ``key``'s original and its reconstruction."""
        return f"{key}.orig.mp4", f"{key}.recon.mp4"

    def config(self, stage: str) -> Path:
        """The config file mugv writes for ``stage``'s console script."""
        return self.configs / f"{stage}.yaml"

    def marker(self, stage: str) -> Path:
        """Written atomically when ``stage`` finished: its key, timings and steps."""
        return self.done / f"{stage}.json"

    def claim(self, stage: str) -> Path:
        """Written atomically before ``stage`` touches its outputs: the paths it owns."""
        return self.claims / f"{stage}.json"

    def log(self, stage: str) -> Path:
        """The output of ``stage``'s child processes."""
        return self.logs / f"{stage}.log"
