"""embed-text: text features are the T5 encoder's own outputs, written into new shards."""

from __future__ import annotations

import numpy as np
import pytest
from mugv_dit.cli import main
from mugv_dit.text import TINY_DIM, TextEncoder
from mugv_dit_fixtures import make_latent_dataset
from mugv_formats import LatentDataset


def test_embed_text_writes_encoder_features(tmp_path):
    src = make_latent_dataset(
        tmp_path / "in", with_text=False, layout=[(1, 4, 4, 1, 32, 32, 3), (3, 4, 4, 17, 32, 32, 2)]
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "embed-text",
                "--input",
                str(src),
                "--output",
                str(out),
                "--text-encoder",
                "tiny-random",
                "--batch-size",
                "2",
                "--max-length",
                "12",
            ]
        )
        == 0
    )
    ds = LatentDataset(out)
    assert ds.header.text_dim == TINY_DIM and ds.header.text_encoder_id == "tiny-random"
    assert ds.header.max_text_len == 12
    originals = {s.record.key: s for s in LatentDataset(src)}
    enc = TextEncoder("tiny-random", device="cpu", max_length=12)
    for sample in ds:
        orig = originals[sample.record.key]
        np.testing.assert_array_equal(sample.latents, orig.latents)
        assert sample.record.caption == orig.record.caption
        # single-caption encoding (no batch padding) gives the same features
        ref = enc.model(**{k: v for k, v in enc.tokenizer([orig.record.caption], 12).items()})
        ref = ref.last_hidden_state[0].detach().numpy()
        assert sample.text.shape == ref.shape and sample.text.shape[0] <= 12
        np.testing.assert_allclose(sample.text.astype(np.float32), ref, atol=2e-3, rtol=2e-3)
    assert (out / ".nv-meta").is_dir()


def test_embed_text_refuses_bad_encoder(tmp_path):
    with pytest.raises(ValueError, match="neither a local T5 folder"):
        TextEncoder(str(tmp_path / "nope"))
