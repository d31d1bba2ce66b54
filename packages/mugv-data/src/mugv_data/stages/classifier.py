"""Learned-classifier filter: any local Hugging Face image or video classification checkpoint.

This is where a team plugs in its fine-tuned quality model (the MUG-V report filters special
effects, speed-altered footage, camera shake, borders and overlays with a fine-tuned MLLM).
The checkpoint is a local folder loaded with ``AutoModelForImageClassification`` (``task:
image``: ``num_frames`` evenly spaced frames per clip, class probabilities averaged) or
``AutoModelForVideoClassification`` (``task: video``: the frames form one clip input), with its
own image/video processor. Probabilities: softmax, or sigmoid for a multi-label checkpoint
(``problem_type: multi_label_classification``). Score ``classifier_score`` = the highest
probability among ``reject_labels``; the clip is rejected when it is ``>= threshold``, the
reason naming the label. Nothing is downloaded.

Shape legend: B images or clips, F frames, L labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mugv_data.config import ClassifierConfig
from mugv_data.stages.base import Clip, ClipStage, Resources


class ClassifierFilter(ClipStage):
    """Rejects clips a local classification checkpoint assigns to ``reject_labels``."""

    name = "classifier"
    config: ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__(config)
        if not config.model_path:
            raise ValueError("filters.classifier needs model_path (a local model folder)")
        if not config.reject_labels:
            raise ValueError("filters.classifier needs reject_labels (labels of the checkpoint)")
        self._model = None
        self._processor = None
        self._label_ids: list[int] = []

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1, gpus=0.5 if self.config.device.startswith("cuda") else 0.0)

    def setup(self) -> None:
        if self._model is not None:
            return
        import torch
        import transformers as tf

        c = self.config
        path = Path(c.model_path)
        if not path.is_dir():
            raise ValueError(f"filters.classifier.model_path {path} is not a local model folder")
        auto = (
            tf.AutoModelForVideoClassification
            if c.task == "video"
            else tf.AutoModelForImageClassification
        )
        try:
            model = auto.from_pretrained(str(path), local_files_only=True)
            self._processor = self._load_processor(tf, path)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"filters.classifier.model_path {path}: not a {c.task} classification "
                f"checkpoint: {e}"
            ) from e
        labels = {str(v): int(k) for k, v in model.config.id2label.items()}
        missing = [lab for lab in c.reject_labels if lab not in labels]
        if missing:
            raise ValueError(
                f"filters.classifier.reject_labels {missing} are not labels of {path} "
                f"(its labels: {sorted(labels)})"
            )
        self._label_ids = [labels[lab] for lab in c.reject_labels]
        device = c.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("filters.classifier.device=cuda but no GPU is visible")
        self._device = torch.device(device)
        self._model = model.eval().to(self._device)
        self._multi = getattr(model.config, "problem_type", None) == "multi_label_classification"

    def _load_processor(self, tf, path: Path):
        if self.config.task == "video" and hasattr(tf, "AutoVideoProcessor"):
            try:
                return tf.AutoVideoProcessor.from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError, KeyError):
                pass
        return tf.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)

    def teardown(self) -> None:
        self._model = self._processor = None

    def probabilities(self, inputs) -> np.ndarray:
        """float64 [B, L] class probabilities of a batch of images (image task) or of clips
        (video task: a list of frame lists)."""
        import torch

        if self.config.task == "video":
            px = self._processor(list(inputs), return_tensors="pt")
            px = px["pixel_values_videos"] if "pixel_values_videos" in px else px["pixel_values"]
        else:
            px = self._processor(images=list(inputs), return_tensors="pt")["pixel_values"]
        dtype = next(self._model.parameters()).dtype
        with torch.inference_mode():
            logits = self._model(pixel_values=px.to(self._device, dtype)).logits.double()
        probs = torch.sigmoid(logits) if self._multi else torch.softmax(logits, dim=-1)
        return probs.cpu().numpy()

    def process(self, clips: list[Clip]) -> None:
        self.setup()
        c = self.config
        todo = [k for k in clips if k.frames is not None and (k.kept or not self.short_circuit)]
        if not todo:
            return
        per_clip: list[np.ndarray] = []
        if c.task == "video":
            for a in range(0, len(todo), c.batch_size):
                batch = [
                    list(k.frames.get(k.frames.evenly(c.num_frames)))
                    for k in todo[a : a + c.batch_size]
                ]
                per_clip.extend(self.probabilities(batch))
        else:
            frames, owner = [], []
            for i, k in enumerate(todo):
                for f in k.frames.get(k.frames.evenly(c.num_frames)):
                    frames.append(f)
                    owner.append(i)
            probs = np.concatenate(
                [
                    self.probabilities(frames[a : a + c.batch_size])
                    for a in range(0, len(frames), c.batch_size)
                ]
            )
            owner_arr = np.asarray(owner)
            per_clip = [probs[owner_arr == i].mean(0) for i in range(len(todo))]
        for k, p in zip(todo, per_clip, strict=True):
            sel = p[self._label_ids]
            j = int(np.argmax(sel))
            score = float(sel[j])
            k.scores["classifier_score"] = score
            if score >= c.threshold:
                k.reject(
                    self.name,
                    f"classified {c.reject_labels[j]!r} (p {score:.3f} >= {c.threshold:g})",
                )
