"""The saved-pipeline folder in diffusers' layout (issue 30): ``model_index.json`` naming each
component, ``DiffusionPipeline.from_pretrained`` giving the same video as the pipeline built
from parts, variants and dtypes, and the old ``pipeline.json`` layout still loading."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from mugv_infer_fixtures import FRAMES, HEIGHT, WIDTH


def _run(pipe, **kw):
    return pipe(
        "a cat walks",
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=2,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
        **kw,
    ).frames


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    from mugv_infer import MUGVPipeline

    pipe = MUGVPipeline.from_parts(parts["model"], parts["vae"], parts["t5"])
    pipe.set_progress_bar_config(disable=True)
    root = tmp_path_factory.mktemp("folder") / "pipe"
    pipe.save_pretrained(root)
    return pipe, root


def test_model_index_names_every_component_with_library_and_class(saved):
    _, root = saved
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "MUGVPipeline"
    assert index["transformer"] == ["mugv_infer", "MUGDiTTransformer3DModel"]
    assert index["vae"] == ["mugv_infer", "AutoencoderMUGV"]
    assert index["scheduler"] == ["mugv_infer", "MUGVFlowEulerScheduler"]
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert index["tokenizer"][0] == "transformers"
    for name in ("transformer", "vae"):
        assert (root / name / "config.json").is_file()
        assert (root / name / "diffusion_pytorch_model.safetensors").is_file()
    assert (root / "text_encoder" / "model.safetensors").is_file()
    assert (root / "scheduler" / "scheduler_config.json").is_file()
    assert not (root / "pipeline.json").exists()
    assert not list(root.rglob("*.bin")) and not list(root.rglob("*.pt"))


def test_diffusion_pipeline_from_pretrained_equals_the_pipeline_from_parts(saved):
    import mugv_infer  # noqa: F401  (makes MUGVPipeline known to diffusers)
    from diffusers import DiffusionPipeline

    pipe, root = saved
    loaded = DiffusionPipeline.from_pretrained(root)
    assert type(loaded).__name__ == "MUGVPipeline"
    assert type(loaded.vae).__name__ == "AutoencoderMUGV"
    assert loaded.vae_checkpoint_id == pipe.vae_checkpoint_id != "unknown"
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_run(loaded), _run(pipe), rtol=0, atol=0)


def test_variant_and_torch_dtype_are_honoured(saved, tmp_path):
    from diffusers import DiffusionPipeline
    from mugv_infer import MUGVPipeline

    pipe, _ = saved
    pipe.save_pretrained(tmp_path / "v", variant="ema")
    assert (tmp_path / "v" / "transformer" / "diffusion_pytorch_model.ema.safetensors").is_file()
    assert (tmp_path / "v" / "vae" / "diffusion_pytorch_model.ema.safetensors").is_file()
    half = MUGVPipeline.from_pretrained(tmp_path / "v", variant="ema", torch_dtype=torch.bfloat16)
    assert half.transformer.dtype == half.vae.dtype == half.text_encoder.dtype == torch.bfloat16
    want = pipe.transformer.state_dict()["x_embedder.weight"].bfloat16()
    assert torch.equal(half.transformer.state_dict()["x_embedder.weight"], want)
    full = DiffusionPipeline.from_pretrained(tmp_path / "v", variant="ema")
    assert full.transformer.dtype == torch.float32


def test_old_pipeline_json_folder_loads_with_a_deprecation_warning(saved, tmp_path):
    from mugv_formats.outputs import OutputError, claim_output
    from mugv_infer import MUGVPipeline
    from mugv_infer.pipeline import PIPELINE_KIND

    pipe, _ = saved
    old = tmp_path / "old"  # what save_pretrained wrote before the diffusers layout
    claim_output(old, PIPELINE_KIND)  # its ownership marker
    pipe.transformer.save_pretrained(old / "transformer")
    pipe.vae.to_mugv_vae().save_pretrained(old / "vae")
    pipe.scheduler.save_pretrained(old / "scheduler")
    pipe.text_encoder.save_pretrained(old / "text_encoder")
    pipe.tokenizer.save_pretrained(old / "tokenizer")
    (old / "pipeline.json").write_text(json.dumps({"class": "MUGVPipeline"}))
    with pytest.warns(FutureWarning, match="pipeline.json"):
        loaded = MUGVPipeline.from_pretrained(old)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_run(loaded), _run(pipe), rtol=0, atol=0)
    # a complete old folder is ours and complete: replaced only with overwrite
    with pytest.raises(OutputError, match="old layout"):
        loaded.save_pretrained(old)
    assert (old / "pipeline.json").is_file()
    loaded.save_pretrained(old, overwrite=True)
    assert (old / "model_index.json").is_file() and not (old / "pipeline.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new layout: no deprecation
        MUGVPipeline.from_pretrained(old)


def test_not_a_pipeline_folder_is_refused_naming_it(tmp_path):
    from mugv_infer import MUGVPipeline

    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="no model_index.json"):
        MUGVPipeline.from_pretrained(tmp_path / "x")
    (tmp_path / "x" / "model_index.json").write_text('{"_class_name": "MUGVPipeline"}')
    with pytest.raises(ValueError, match="'transformer' must be"):
        MUGVPipeline.from_pretrained(tmp_path / "x")
