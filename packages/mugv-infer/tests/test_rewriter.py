"""The prompt rewriter (mugv_infer.rewriter) on a tiny random Qwen2 with a word-level
tokenizer and a chat template, built here (nothing downloaded): greedy decoding against a
greedy loop written here, determinism, the chat prompt, and the CLI storing the rewritten
prompt beside the video."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
WORDS = [
    "a",
    "cat",
    "dog",
    "red",
    "car",
    "walks",
    "runs",
    "drives",
    "on",
    "the",
    "grass",
    "road",
    "beach",
    "at",
    "night",
    "sunny",
    "day",
    "slowly",
    "fast",
    "camera",
    "pans",
    "left",
    "right",
    "close",
    "up",
    "wide",
    "shot",
    "fur",
    "coat",
    "blue",
    "sky",
    "trees",
    "behind",
    "light",
    "golden",
    "hour",
    "tracking",
    "handheld",
    "static",
    "small",
    "large",
    "white",
    "black",
    "green",
    "waves",
    "crash",
    "city",
]


def tiny_llm(path: Path, seed: int = 0) -> Path:
    """A 2-layer random Qwen2 causal LM with a word-level tokenizer and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    special = ["<|pad|>", "<|end|>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(special + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<|pad|>", eos_token="<|end|>",
        additional_special_tokens=special[3:],
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=vocab["<|end|>"], pad_token_id=vocab["<|pad|>"], tie_word_embeddings=False,
    )  # fmt: skip
    Qwen2ForCausalLM(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> Path:
    return tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-qwen2")


def test_greedy_rewrite_matches_a_greedy_loop_and_repeats(llm):
    from mugv_infer.rewriter import CAPTION_TEMPLATE, PromptRewriter, clean_caption

    rw = PromptRewriter(llm, max_new_tokens=12)
    prompt = "a cat on the grass"
    text = rw.tokenizer.apply_chat_template(
        rw.messages(prompt), add_generation_prompt=True, tokenize=False
    )
    assert CAPTION_TEMPLATE in text and prompt in text and text.rstrip().endswith("<|assistant|>")
    # the reference: argmax of the logits, one token at a time, until eos or 12 tokens
    ids = rw.tokenizer(text, return_tensors="pt")["input_ids"]
    eos = rw.tokenizer.eos_token_id
    new = []
    with torch.no_grad():
        for _ in range(12):
            nxt = int(rw.model(ids).logits[0, -1].argmax())
            if nxt == eos:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    expected = clean_caption(rw.tokenizer.decode(new, skip_special_tokens=True)) or prompt
    assert rw.rewrite(prompt) == expected
    again = PromptRewriter(llm, max_new_tokens=12)
    assert again.rewrite(prompt) == expected  # deterministic: same weights, same caption


def test_clean_caption():
    from mugv_infer.rewriter import clean_caption

    assert clean_caption('  Caption:  "A cat\n\n walks."  ') == "A cat walks."


def test_rewriter_folder_errors(tmp_path):
    from mugv_infer.rewriter import PromptRewriter

    with pytest.raises(ValueError, match="no config.json"):
        PromptRewriter(tmp_path)


def test_cli_rewrites_stores_the_prompt_and_shows_stages(parts, llm, tmp_path, capsys):
    """``generate --rewrite-prompt --rewriter PATH`` (with the low-memory recipe, emulated fp8
    on the CPU): the encoded prompt is the rewriter's, stored in the resolved settings beside
    the video; the stage bar names rewrite / text / DiT / decode; a rerun from the resolved
    settings needs no LLM and gives the same video."""
    import yaml
    from mugv_infer.cli import main
    from mugv_infer.rewriter import PromptRewriter

    out = tmp_path / "v.gif"
    args = [
        "generate", "--model", str(parts["model"]), "--vae", str(parts["vae"]),
        "--text-encoder", str(parts["t5"]), "--prompt", "a red car", "--resolution", "32x32",
        "--frames", "9", "--steps", "2", "--out", str(out), "--rewrite-prompt",
        "--rewriter", str(llm), "--low-memory", "--set", "runtime.dtype=float32",
        "--set", "rewriter_max_new_tokens=8",
    ]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    for stage in ("rewrite", "text", "DiT", "decode"):
        assert re.search(rf"\b{stage} \d+\.\ds", err), (stage, err[-800:])
    resolved = yaml.safe_load(out.with_name("v.resolved.yaml").read_text())
    expected = PromptRewriter(llm, max_new_tokens=8).rewrite("a red car")
    assert resolved["rewritten_prompt"] == [expected]
    assert resolved["prompt"] == ["a red car"]
    first = out.read_bytes()
    rerun = tmp_path / "again.gif"
    again = ["generate", "--config", str(out.with_name("v.resolved.yaml")), "--out", str(rerun),
             "--set", "rewriter=/nonexistent"]  # fmt: skip
    assert main(again) == 0
    assert rerun.read_bytes() == first
