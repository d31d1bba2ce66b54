"""Prompt rewriter: a local instruction-tuned LLM expands a short prompt into the caption style
the DiT was trained on (``mugv-infer generate --rewrite-prompt --rewriter PATH``).

The release's captions are long and structured; a short user prompt falls outside that
distribution. The rewriter asks the LLM (transformers ``AutoModelForCausalLM`` with its chat
template; weights from a local folder, nothing downloaded) for one paragraph that covers, in
order, the subject, its appearance, its motion, the background and the camera
(:data:`CAPTION_TEMPLATE`, also in docs/prompt-rewriting.md). Decoding is greedy by default,
so the same prompt and weights give the same caption; ``sample=True`` with a ``seed`` draws.

The rewritten prompts are the ones encoded, and they are stored with the run's resolved
settings beside the video (``rewritten_prompt``): a rerun from that file reproduces the video
without the LLM.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

CAPTION_TEMPLATE = (
    "You rewrite a short idea for a video into one detailed caption for a text-to-video "
    "model. Write a single paragraph of 80 to 150 words in plain present-tense English, "
    "covering in this order: (1) the subject: who or what is in the video; (2) appearance: "
    "colours, clothing, materials, size, expression; (3) motion: what moves and how, from the "
    "start of the clip to its end; (4) background: the setting, the light, the time of day, "
    "the weather; (5) camera: shot size, angle and camera movement. Keep every detail the "
    "user gave and do not contradict it; add only plausible visual details. No lists, no "
    "headings, no quotation marks, no sound, no text overlays; answer with the caption only."
)
"""The instruction (system message) given to the LLM: the release's caption style."""


def clean_caption(text: str) -> str:
    """One paragraph: whitespace collapsed, surrounding quotes and a "Caption:" label off."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^(caption|rewritten prompt|prompt)\s*:\s*", "", text, flags=re.IGNORECASE)
    return text.strip().strip("\"'").strip()


class PromptRewriter:
    """A local causal LLM with a chat template. ``path``: a transformers folder (config,
    weights, tokenizer with ``chat_template``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 256,
        sample: bool = False,
        seed: int = 0,
        temperature: float = 0.7,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"rewriter folder {path} has no config.json (a local LLM folder)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, torch_dtype=dtype
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"rewriter folder {path}: cannot load ({e})") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"rewriter folder {path}: its tokenizer has no chat template "
                "(an instruction-tuned model is needed)"
            )
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.sample, self.seed, self.temperature = sample, seed, temperature

    def messages(self, prompt: str) -> list[dict]:
        return [
            {"role": "system", "content": CAPTION_TEMPLATE},
            {"role": "user", "content": prompt},
        ]

    @torch.no_grad()
    def rewrite(self, prompt: str) -> str:
        """The caption for ``prompt`` (the prompt itself, with a warning, when the LLM gives
        nothing usable)."""
        ids = self.tokenizer.apply_chat_template(
            self.messages(prompt), add_generation_prompt=True, return_tensors="pt",
            return_dict=True,
        )  # fmt: skip
        ids = {k: v.to(self.device) for k, v in ids.items()}
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=self.sample)
        if self.sample:
            torch.manual_seed(self.seed)
            kwargs["temperature"] = self.temperature
        else:  # greedy: the same caption every time
            kwargs.update(temperature=None, top_p=None, top_k=None)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        out = self.model.generate(**ids, **kwargs, pad_token_id=pad)
        new = out[0, ids["input_ids"].shape[1] :]
        text = clean_caption(self.tokenizer.decode(new, skip_special_tokens=True))
        if not text:
            warnings.warn(
                f"the rewriter gave an empty caption for {prompt!r}; the prompt is used as is",
                stacklevel=2,
            )
            return prompt
        return text

    def rewrite_all(self, prompts: list[str]) -> list[str]:
        return [self.rewrite(p) for p in prompts]

    def release(self) -> None:
        """Free the LLM before the video models load."""
        self.model.to("cpu")
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def rewrite_prompts(cfg, device: torch.device) -> list[str]:
    """The prompts of a GenerateConfig after the rewriter (``cfg.rewritten_prompt`` when
    given: a rerun from a resolved settings file uses them as they are)."""
    if cfg.rewritten_prompt is not None:
        return list(cfg.rewritten_prompt)
    rewriter = PromptRewriter(
        cfg.rewriter, device=device, max_new_tokens=cfg.rewriter_max_new_tokens
    )
    try:
        return rewriter.rewrite_all(cfg.prompt)
    finally:
        rewriter.release()
