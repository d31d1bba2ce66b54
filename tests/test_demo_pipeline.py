"""The README's main job, shortened: ``mugv run`` through every stage on the real sample clips
(few steps), checking each hand-off with the formats' own readers and independent paths, then
stage reuse and ``--force``. The full-length demo (memorisation check, report in a browser) is
``test_demo_release.py`` (marked slow; CI runs it after the fast suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mugv_formats import (
    DIT_EXPORT_FORMAT,
    VAE_CHECKPOINT_FORMAT,
    ClipDataset,
    LatentDataset,
    load_weights_folder,
)

# The default demo, shortened to what the hand-offs need (the test runs in the default suite):
# the VAE trains 2 steps on one 9-frame clip per batch (the latents, their statistics and the
# reconstructions keep the demo's 17 frames at 64x64); no `mugv eval vae` table (that command
# has its own tests; the release test runs it inside the full demo).
FAST = {
    "vae": {
        "config": {"steps": 2, "data": {"batch_size": 1, "frames": 9}},
        "eval_resolutions": [],
    },
    "dit": {
        "config": {
            "curriculum": [
                {"name": "warmup", "steps": 2, "lr": 1.0e-3, "image_share_start": 0.5},
                {"name": "video", "steps": 2, "lr": 1.0e-3, "image_share_start": 0.0},
            ]
        }
    },
    "align": {
        "sample_steps": 2,
        "sft": {"curriculum": [{"name": "sft", "steps": 2, "lr": 3.0e-4}]},
        "dpo": {"curriculum": [{"name": "dpo", "steps": 2, "lr": 3.0e-4}]},
        "kto": {"curriculum": [{"name": "kto", "steps": 2, "lr": 3.0e-4}]},
    },
    "generate": {"steps": 2, "max_prompts": 1},
    "memorise": {"enabled": False},
}


def _mugv(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    mugv = Path(sys.executable).parent / "mugv"
    res = subprocess.run([str(mugv), *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("demo")
    cfg = root / "fast.yaml"
    cfg.write_text(yaml.safe_dump({**FAST, "run_dir": str(root / "run")}))
    return root / "run", cfg, _mugv("run", str(cfg))


def test_every_hand_off(run) -> None:
    out, _, res = run
    assert "pipeline finished" in res.stdout
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["dit"]["config"]["curriculum"][0]["steps"] == 2

    # curate: real clips, scores, captions from the table mugv wrote
    records = ClipDataset(out / "clips").records()
    assert len(records) >= 2
    assert all({"sharpness", "motion"} <= set(r.scores) for r in records)
    bunny = [r for r in records if Path(r.source).name == "bigbuckbunny.mp4"]
    assert bunny and bunny[0].caption == "a big white rabbit in a green meadow"

    # vae: the trained checkpoint is the one that encoded the latents
    from mugv_vae.checkpoint import checkpoint_id

    vae = load_weights_folder(out / "vae", format=VAE_CHECKPOINT_FORMAT)
    assert vae.config and vae.extra.get("train_step") == 2
    latents = LatentDataset(out / "latents")
    assert latents.header.vae_checkpoint_id == checkpoint_id(out / "vae")
    samples = {s.record.clip_key: s for s in latents}
    assert set(samples) == {r.key for r in records}
    for s in samples.values():  # 17 frames at 64x64 -> 1 + 2 latents of 8x8
        assert s.latents.shape == (24, 3, 8, 8) and np.isfinite(s.latents).all()
    # the latents are normalised by the VAE's per-channel statistics, measured on these very
    # clips (mugv-vae train's latent_stats): per channel mean 0 and std 1 over every stored position
    assert latents.header.latents_normalized
    np.testing.assert_allclose(latents.header.latent_std, vae.extra["latent_std"], rtol=1e-6)
    assert not np.allclose(vae.extra["latent_std"], 1.0)
    z = np.concatenate([np.asarray(s.latents, np.float64).reshape(24, -1) for s in latents], 1)
    np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=1), 1.0, atol=1e-4)
    recon = json.loads((out / "recon" / "recon.json").read_text())
    assert {c["key"] for c in recon["clips"]} == set(samples)
    assert all(5 < c["psnr"] < 60 for c in recon["clips"])

    # text: latents untouched; features equal those of the T5 folder mugv-infer loads
    from mugv_infer.text import encode_prompts, load_t5

    with_text = {s.record.clip_key: s for s in LatentDataset(out / "latents-text")}
    tok, enc = load_t5(out / "text-encoder")
    for key, s in with_text.items():
        np.testing.assert_array_equal(s.latents, samples[key].latents)
        feats, mask = encode_prompts(tok, enc, [s.record.caption], "cpu")
        np.testing.assert_allclose(feats[0][mask[0]].numpy(), s.text, atol=2e-3, rtol=1e-2)

    # dit -> samples -> pairs -> sft -> dpo: every export fits the same architecture
    exports = {
        n: load_weights_folder(out / n, format=DIT_EXPORT_FORMAT)
        for n in ("dit-export", "sft-export", "dpo-export")
    }
    names = set(exports["dit-export"].state_dict)
    for e in exports.values():
        assert set(e.state_dict) == names
        assert all(np.isfinite(t.float().numpy()).all() for t in e.state_dict.values())
    for a, b in (("dit-export", "sft-export"), ("sft-export", "dpo-export")):
        sa, sb = exports[a].state_dict, exports[b].state_dict
        assert any(not np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in names), (a, b)

    prompts = json.loads((out / "prompts.json").read_text())
    assert sorted(prompts) == sorted({r.caption for r in records})
    gen = list(LatentDataset(out / "samples"))
    assert sorted(s.record.caption for s in gen) == sorted(prompts)
    assert all(s.latents.shape == (24, 3, 8, 8) for s in gen)

    from mugv_formats.preference import read_preference_data

    _, pairs = read_preference_data(out / "rdpo" / "prefs")
    pool = {s.record.key: s for s in LatentDataset(out / "rdpo" / "latents")}
    real = {s.record.key: s for s in with_text.values()}
    assert len(pairs) == len(prompts)
    for p in pairs:  # the real clip is preferred over the model's sample of its caption
        chosen, rejected = pool[p.chosen], pool[p.rejected]
        assert chosen.record.caption == rejected.record.caption == p.caption
        src = real[p.chosen.removeprefix("real-")]
        np.testing.assert_array_equal(chosen.latents, src.latents)
        assert p.rejected.startswith("gen-")
    dpo = [json.loads(x) for x in (out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(dpo) == 2 and all({"reward_margin", "pref_accuracy"} <= set(r) for r in dpo)
    _, labels = read_preference_data(out / "kto-prefs")
    assert sorted(x.desirable for x in labels) == sorted(k.startswith("real-") for k in pool)
    assert all(x.desirable == x.key.startswith("real-") and x.key in pool for x in labels)
    kto = [json.loads(x) for x in (out / "kto" / "metrics.jsonl").read_text().splitlines()]
    assert len(kto) == 2 and all("pref_accuracy" in r for r in kto)
    kto_export = load_weights_folder(out / "kto-export", format=DIT_EXPORT_FORMAT)
    assert set(kto_export.state_dict) == names

    # generate: playable videos of the requested size
    import av

    for name in ("t2v.mp4", "i2v.mp4"):
        with av.open(str(out / "videos" / name)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 17 and frames[0].shape == (64, 64, 3), name

    page = (out / "report.html").read_text()
    for section in ("overview", "curate", "vae", "training", "generate", "memorise", "formats"):
        assert f'<section id="{section}">' in page
    assert "tiny" in page and "poor" in page


def test_second_run_reuses_and_force_redoes_the_rest(run) -> None:
    out, cfg, _ = run
    markers = {p.name: p.read_text() for p in (out / ".mugv" / "done").glob("*.json")}
    res = _mugv("run", str(cfg))
    assert res.stdout.count("reused: finished") == len(markers) == 12  # text stage included
    assert "0 stage(s) ran" in res.stdout
    assert {p.name: p.read_text() for p in (out / ".mugv" / "done").glob("*.json")} == markers

    before = (out / "videos" / "t2v.mp4").stat().st_mtime_ns
    res = _mugv("run", str(cfg), "--force", "generate")
    ran = [ln.split("]")[0][1:] for ln in res.stdout.splitlines() if "(forced)" in ln]
    assert ran == ["generate", "report"]
    assert "[dpo] reused" in res.stdout
    assert (out / "videos" / "t2v.mp4").stat().st_mtime_ns != before
