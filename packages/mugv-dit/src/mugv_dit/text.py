"""`mugv-dit embed-text`: add T5 encoder features to a latent-shard dataset.

One-way: shards in, new shards out. Each sample keeps its latents and record; its caption is
encoded (truncated to ``max_length`` tokens, no padding kept) into ``KEY.text.npy`` ``[L, D]``
float16. The header records the text encoder id, width and maximum length.

Encoders: a local ``transformers`` T5 encoder folder (``T5EncoderModel`` + its tokenizer,
e.g. T5-v1.1-XXL), or ``tiny-random``: a seeded 2-layer, 32-wide random T5 with a byte-level
tokenizer, for tests and CPU demos. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from mugv_formats import LATENT_SHARDS_FORMAT, LatentDataset, LatentShardWriter, derive_header
from mugv_formats.outputs import claim_output

from mugv_dit import __version__

TINY_RANDOM = "tiny-random"
TINY_DIM = 32


class _ByteTokenizer:
    """UTF-8 bytes -> ids (offset past pad/eos), then EOS; used only by ``tiny-random``."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, texts: list[str], max_length: int):
        rows = []
        for text in texts:
            ids = [2 + b % (self.vocab_size - 2) for b in text.encode("utf-8")][: max_length - 1]
            rows.append([*ids, 1])
        width = max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class TextEncoder:
    """A T5 encoder plus tokenizer producing per-caption features ``[L, D]``."""

    def __init__(self, source: str, *, device: str = "auto", max_length: int = 300):
        from transformers import T5Config, T5EncoderModel

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.max_length = max_length
        if source == TINY_RANDOM:
            torch.manual_seed(0)
            config = T5Config(
                vocab_size=259, d_model=TINY_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4
            )
            self.model = T5EncoderModel(config)
            self.tokenizer = _ByteTokenizer(config.vocab_size)
            self.encoder_id = TINY_RANDOM
        else:
            path = Path(source)
            if not path.is_dir():
                raise ValueError(
                    f"--text-encoder {source!r} is neither a local T5 folder nor 'tiny-random'"
                )
            from transformers import AutoTokenizer

            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self.model = T5EncoderModel.from_pretrained(path, torch_dtype=dtype)
            hf_tok = AutoTokenizer.from_pretrained(path)

            def tokenize(texts, max_length):
                return hf_tok(
                    texts, max_length=max_length, truncation=True, padding=True, return_tensors="pt"
                )

            self.tokenizer = tokenize
            self.encoder_id = path.name
        self.model.eval().to(self.device)
        self.dim = int(self.model.config.d_model)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> list[np.ndarray]:
        """Features of each caption, unpadded: list of ``[L_i, D]`` float16 arrays."""
        tokens = self.tokenizer(captions, max_length=self.max_length)
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        lengths = mask.sum(dim=1).tolist()
        return [
            hidden[i, : max(1, n)].cpu().numpy().astype(np.float16) for i, n in enumerate(lengths)
        ]


def embed_text_dataset(
    input_path: str | Path,
    output_path: str | Path,
    text_encoder: str,
    *,
    max_length: int = 300,
    batch_size: int = 8,
    device: str = "auto",
    samples_per_shard: int = 64,
    overwrite: bool = False,
) -> int:
    """Write ``output_path``: the input latent dataset plus text features. Returns samples.

    The output is claimed first (``mugv_formats.outputs.claim_output``): a new dataset, or an
    interrupted one of this command with the same settings (resumed); a complete latent
    dataset there is replaced only with ``overwrite``; anything else, or an output that is,
    holds or sits in the input, is refused."""
    from tqdm import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    source = LatentDataset(input_path)
    claim = claim_output(
        output_path,
        LATENT_SHARDS_FORMAT,
        overwrite=overwrite,
        inputs=[input_path],
        settings={
            "command": "embed-text",
            "input": os.path.realpath(input_path),
            "text_encoder": str(text_encoder),
            "max_length": max_length,
            "samples_per_shard": samples_per_shard,
        },
    )
    encoder = TextEncoder(text_encoder, device=device, max_length=max_length)
    head = source.header
    header = derive_header(
        head,
        producer=f"mugv-dit {__version__}",
        config={
            "command": "embed-text",
            "input": str(input_path),
            "text_encoder": encoder.encoder_id,
            "max_length": max_length,
            "input_config": head.config,
        },
        text_encoder_id=encoder.encoder_id,
        text_dim=encoder.dim,
        max_text_len=max_length,
    )
    n = 0
    pending = []
    with LatentShardWriter(claim.write_path, header, samples_per_shard=samples_per_shard) as writer:
        done = {r.key for r in writer.existing_records()}

        def flush():
            feats = encoder.encode([s.record.caption for s in pending])
            for sample, text in zip(pending, feats):
                writer.write(sample.record.for_rewrite(), sample.latents, text)
            pending.clear()

        for sample in tqdm(source, total=len(source), desc="embed-text", unit="sample"):
            n += 1
            if sample.record.key in done:
                continue
            pending.append(sample)
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    claim.commit()
    return n
