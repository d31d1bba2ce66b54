"""A LoRA adapter trained by mugv-dit, written as a peft folder (``mugv-dit export-lora``),
loaded into mugv-infer's transformer through ``load_lora`` -- and through peft's own
``PeftModel.from_pretrained`` -- predicts the velocity of the merged export
(``mugv-dit export --merge-lora``) loaded by mugv-infer, to 1e-6 (issue 26); several adapters
load with weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")
CHANNELS, TEXT_DIM = 24, 32


def _latents(path):
    from mugv_formats import LatentRecord, LatentShardWriter

    rng = np.random.default_rng(0)
    header = LatentShardWriter.make_header(
        producer="lora-parity-test 0",
        vae_checkpoint_id="test-vae",
        latent_channels=CHANNELS,
        latent_mean=[0.0] * CHANNELS,
        latent_std=[1.0] * CHANNELS,
        text_encoder_id="test-t5",
        text_dim=TEXT_DIM,
        max_text_len=16,
    )
    with LatentShardWriter(path, header, samples_per_shard=8) as writer:
        for n in range(8):
            lat = rng.standard_normal((CHANNELS, 3, 4, 4)).astype(np.float32)
            text = rng.standard_normal((4, TEXT_DIM)).astype(np.float32)
            rec = LatentRecord(
                key=f"s{n}", caption=f"c{n}", fps=24.0, num_frames=17, height=32, width=32
            )
            writer.write(rec, lat, text)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three LoRA steps of `mugv-dit train` from a random base export; the merged export and
    the peft adapter folder of its raw weights."""
    from mugv_dit.cli import main
    from mugv_dit.config import model_preset
    from mugv_dit.interop.export import write_random_export
    from mugv_dit.parallel import init_distributed

    init_distributed(1, backend="gloo")
    tmp = tmp_path_factory.mktemp("lora")
    base = write_random_export(model_preset("debug", text_dim=TEXT_DIM), tmp / "base", seed=3)
    raw = {
        "preset": "debug",
        "model": {"text_dim": TEXT_DIM},
        "data": {"path": str(_latents(tmp / "lat")), "tokens_per_batch": 64},
        "train": {"progress": False, "tensorboard": False, "init_from": str(base)},
        "curriculum": [{"name": "main", "steps": 3, "lr": 1e-2}],
        "lora": {"rank": 4, "alpha": 8.0, "targets": ["qkv", "proj", "q", "kv", "fc1", "fc2"]},
        "output_dir": str(tmp / "run"),
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp / "run.yaml")]) == 0
    run = str(tmp / "run")
    args = ["--run", run, "--weights", "model"]
    assert main(["export", *args, "--output", str(tmp / "merged"), "--merge-lora"]) == 0
    assert main(["export-lora", *args, "--output", str(tmp / "adapter")]) == 0
    return tmp


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, CHANNELS, 3, 4, 6, generator=g)
    text = torch.randn(2, 5, TEXT_DIM, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return x, torch.tensor([0.3, 0.8]), text, mask


def _velocity(model, inputs):
    x, sigma, text, mask = inputs
    with torch.no_grad():
        return model(x, sigma, text, mask, fps=24.0).sample[:, :CHANNELS]


def test_trained_adapter_in_mugv_infer_equals_the_merged_export(trained):
    from mugv_infer.enhancer import load_lora, load_loras
    from mugv_infer.models import MUGDiTTransformer3DModel
    from peft import PeftModel

    inputs = _inputs()
    merged = _velocity(MUGDiTTransformer3DModel.from_export(trained / "merged"), inputs)
    base = _velocity(MUGDiTTransformer3DModel.from_export(trained / "base"), inputs)
    assert (merged - base).abs().max() > 1e-4  # the adapter was trained: it changes the output

    def fresh():
        return MUGDiTTransformer3DModel.from_export(trained / "base")

    adapted = load_lora(fresh(), trained / "adapter")
    torch.testing.assert_close(_velocity(adapted, inputs), merged, rtol=0, atol=1e-6)
    fused = load_lora(fresh(), trained / "adapter", fuse=True)
    torch.testing.assert_close(_velocity(fused, inputs), merged, rtol=0, atol=1e-6)
    # peft itself reads the folder: same names, same target modules (the embedders' fc1/fc2
    # are not adapted)
    peft_model = PeftModel.from_pretrained(fresh(), str(trained / "adapter"))
    names = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]
    assert len(names) == 7 * 2 and all(".blocks." in n for n in names)
    torch.testing.assert_close(_velocity(peft_model, inputs), merged, rtol=0, atol=1e-6)
    # several adapters with weights: two halves of the same adapter are the adapter, and a
    # weight scales the update (checked against base + w * (merged - base))
    halves = load_loras(fresh(), [(trained / "adapter", 0.5), (trained / "adapter", 0.5)])
    torch.testing.assert_close(_velocity(halves, inputs), merged, rtol=0, atol=1e-6)
    double = load_lora(fresh(), trained / "adapter", weight=2.0)
    pairs = list(_linear_pairs(double, trained))
    assert len(pairs) == 7 * 2  # every adapted linear of the 2 blocks
    for layer, ref in pairs:
        torch.testing.assert_close(layer, ref, rtol=0, atol=1e-6)


def _linear_pairs(model, trained):
    """(the weight-2 adapter's fused weight, base + 2 (merged - base)) of every block linear."""
    from mugv_dit.interop.export import load_export

    _, base = load_export(trained / "base")
    _, merged = load_export(trained / "merged")
    for layer in model.modules():
        if hasattr(layer, "merge") and hasattr(layer, "lora_A"):
            layer.merge()
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()}
    for k, w in base.items():
        linear = k.startswith("blocks.") and k.endswith(".weight") and "norm" not in k
        if linear and not torch.equal(merged[k], w):
            yield state[k], w + 2 * (merged[k] - w)
