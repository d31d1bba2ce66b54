"""VLM captions: a Qwen2-VL-family model (local folder) captions clips in batches.

Each clip contributes ``captions.num_frames`` evenly spaced frames (short side resized to
``captions.frame_short_side``) as a multi-image prompt. Generation is greedy. Nothing is
downloaded: ``captions.model_path`` must be a local folder. Backends (``captions.backend``):
``transformers`` (:class:`VLMCaptioner`, batched with left padding) and ``vllm``
(:class:`VLLMCaptioner`, vLLM's offline engine; optional, only where ``vllm`` imports).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from mugv_data.config import CaptionConfig


def read_clip_frames(path: str | Path | BinaryIO, num_frames: int, short_side: int) -> np.ndarray:
    """``num_frames`` evenly spaced RGB frames [N, H, W, 3] of an mp4 (a path or an open
    binary file; all frames decoded)."""
    import av

    from mugv_data.decode import target_size

    with av.open(path if hasattr(path, "read") else str(path)) as c:
        frames = list(c.decode(video=0))
    if not frames:
        raise ValueError(f"{path}: no frames")
    k = min(num_frames, len(frames))
    idx = [int((j + 0.5) * len(frames) / k) for j in range(k)]
    w, h = target_size(frames[0].width, frames[0].height, short_side)
    return np.stack([frames[i].to_ndarray(width=w, height=h, format="rgb24") for i in idx])


# Qwen2-VL's ChatML template, used when the tokenizer folder carries none.
QWEN2VL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_PAD = "<|image_pad|>"


def chat_prompt(tokenizer, prompt: str, n_frames: int) -> str:
    """The checkpoint's chat template (Qwen2-VL's when it has none) with one image slot
    (``<|vision_start|><|image_pad|><|vision_end|>``) per frame, then the prompt."""
    content = [{"type": "image"}] * n_frames + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    template = None if getattr(tokenizer, "chat_template", None) else QWEN2VL_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, chat_template=template
    )


def load_captioner(config: CaptionConfig):
    """The captioner of ``captions.backend``."""
    if config.backend == "vllm":
        return VLLMCaptioner.from_config(config)
    return VLMCaptioner.from_config(config)


class VLLMCaptioner:
    """``captions.backend: vllm``: the same prompts (one image slot per frame, the checkpoint's
    chat template) and greedy decoding of ``max_new_tokens``, served by vLLM's offline ``LLM``
    engine (it batches and expands the image slots itself). Optional: vLLM is not a
    dependency of mugv-data; without it this raises a ValueError naming the package."""

    def __init__(self, config: CaptionConfig, llm, tokenizer, sampling_params_cls) -> None:
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.params = sampling_params_cls(temperature=0.0, max_tokens=config.max_new_tokens)

    @classmethod
    def from_config(cls, config: CaptionConfig) -> VLLMCaptioner:
        try:
            import vllm
        except ImportError:
            raise ValueError(
                "captions.backend=vllm needs the vllm package, which is not installed "
                "(install it where it supports your GPU, or use captions.backend=transformers)"
            ) from None
        from transformers import AutoTokenizer

        if not config.model_path or not Path(config.model_path).is_dir():
            raise ValueError(
                f"captions.model_path {config.model_path!r} is not a local model folder"
            )
        path = str(config.model_path)
        llm = vllm.LLM(
            model=path,
            tokenizer=path,
            dtype=config.dtype,
            limit_mm_per_prompt={"image": config.num_frames},
        )
        return cls(
            config,
            llm,
            AutoTokenizer.from_pretrained(path, local_files_only=True),
            vllm.SamplingParams,
        )

    def caption_frames(self, clips: Sequence[np.ndarray]) -> list[str]:
        """Captions of one batch, in order; each item is uint8 frames [N, H, W, 3]."""
        from PIL import Image

        requests = [
            {
                "prompt": chat_prompt(self.tokenizer, self.config.prompt, len(f)),
                "multi_modal_data": {"image": [Image.fromarray(x) for x in f]},
            }
            for f in clips
        ]
        outs = self.llm.generate(requests, self.params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]


class VLMCaptioner:
    """Batched greedy captioning with a local Qwen2-VL-family checkpoint.

    Uses the checkpoint's tokenizer and image processor directly (no ``AutoProcessor``, whose
    video processor needs torchvision): each frame is one image of a multi-image prompt, and
    each ``<|image_pad|>`` is expanded to the image's merged patch count, as Qwen2-VL expects.
    """

    def __init__(self, config: CaptionConfig, model, tokenizer, image_processor) -> None:
        """From loaded components (see :meth:`from_config` to load a local folder)."""
        import torch

        device = config.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn("captions.device=cuda but no GPU: captioning on CPU", stacklevel=2)
            device = "cpu"
        self.config = config
        self.torch = torch
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.image_processor = image_processor
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self.model = model.eval().to(self.device)

    @classmethod
    def from_config(cls, config: CaptionConfig) -> VLMCaptioner:
        """Load model, tokenizer and image processor from ``captions.model_path`` (local)."""
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        if not config.model_path or not Path(config.model_path).is_dir():
            raise ValueError(
                f"captions.model_path {config.model_path!r} is not a local model folder"
            )
        cuda = config.device.startswith("cuda") and torch.cuda.is_available()
        dtype = getattr(torch, config.dtype) if cuda else torch.float32
        path = config.model_path
        return cls(
            config,
            AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True),
            AutoTokenizer.from_pretrained(path, local_files_only=True),
            AutoImageProcessor.from_pretrained(path, local_files_only=True),
        )

    def _prompt(self, n_frames: int) -> str:
        return chat_prompt(self.tokenizer, self.config.prompt, n_frames)

    def caption_frames(self, clips: Sequence[np.ndarray]) -> list[str]:
        """Captions of one batch; each item is uint8 frames [N, H, W, 3]."""
        images = [img for f in clips for img in f]
        vis = self.image_processor(images=images, return_tensors="pt")
        counts = (vis["image_grid_thw"].prod(-1) // (self.merge**2)).tolist()
        texts, k = [], 0
        for f in clips:
            parts = self._prompt(len(f)).split(IMAGE_PAD)
            if len(parts) != len(f) + 1:
                raise ValueError(
                    f"chat template produced {len(parts) - 1} image slots for {len(f)} frames"
                )
            text = parts[0]
            for part in parts[1:]:
                text += IMAGE_PAD * counts[k] + part
                k += 1
            texts.append(text)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {**enc, **vis}
        inputs = {n: t.to(self.device) for n, t in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with self.torch.inference_mode():
            out_BL = self.model.generate(
                **inputs,
                max_new_tokens=self.config.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_BL = out_BL[:, enc["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new_BL, skip_special_tokens=True)]

    def caption_files(self, paths: Sequence[str | Path], progress: bool = False) -> list[str]:
        """Captions of clip files, in order, ``captions.batch_size`` at a time."""
        out: list[str] = []
        bs = self.config.batch_size
        for a in tqdm(
            range(0, len(paths), bs), desc="captions", unit="batch", disable=not progress
        ):
            batch = [
                read_clip_frames(p, self.config.num_frames, self.config.frame_short_side)
                for p in paths[a : a + bs]
            ]
            out.extend(self.caption_frames(batch))
        return out
