"""T5 text features from a local folder (transformers; never a hub download).

The release encodes prompts with T5-v1.1-XXL's encoder, at most 300 tokens, and feeds the
last hidden states of the real tokens (no padding) to the DiT. Here prompts are padded to the
longest one in the batch and the attention mask marks the real tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

MAX_TEXT_TOKENS = 300


def load_t5(path: str | Path, torch_dtype: torch.dtype = torch.float32):
    """(tokenizer, T5EncoderModel) from a local folder; ValueError naming what is missing."""
    from transformers import AutoTokenizer, T5EncoderModel

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"text encoder folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"text encoder folder {path} has no config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"text encoder folder {path}: no usable tokenizer ({e})") from None
    try:
        encoder = T5EncoderModel.from_pretrained(
            str(path), local_files_only=True, torch_dtype=torch_dtype
        )
    except (OSError, ValueError) as e:
        raise ValueError(f"text encoder folder {path}: cannot load T5 encoder ({e})") from None
    return tokenizer, encoder.eval()


@torch.no_grad()
def encode_prompts(
    tokenizer, encoder, prompts: list[str], device, max_length: int = MAX_TEXT_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, L, D] float32 features, [B, L] bool mask)``; L = longest prompt (<= max_length)."""
    batch = tokenizer(
        prompts,
        padding="longest",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden.float(), mask.bool()
