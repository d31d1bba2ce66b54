"""Text-overlay filter: share of the frame covered by detected text (PP-OCR detector).

The detector is rapidocr's PP-OCR text detection ONNX model, shipped inside the rapidocr
wheel, run with onnxruntime on CPU (no download). Only detection runs (no recognition).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from mugv_data.config import TextConfig
from mugv_data.stages.base import Clip, RangeFilter, Resources


def polygons_area_ratio(boxes_K42: np.ndarray | None, height: int, width: int) -> float:
    """Area of the union of quadrilaterals (pixel coords) divided by the frame area."""
    if boxes_K42 is None or len(boxes_K42) == 0:
        return 0.0
    mask_HW = np.zeros((height, width), np.uint8)
    polys = [
        np.round(np.asarray(b, np.float64)).astype(np.int32).reshape(-1, 1, 2) for b in boxes_K42
    ]
    cv2.fillPoly(mask_HW, polys, 1)
    return float(mask_HW.mean())


class TextDetector:
    """Thin wrapper over rapidocr's detection-only pipeline."""

    def __init__(self, limit_side: int = 640, threads: int = 1) -> None:
        from rapidocr import RapidOCR

        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
        self._engine = RapidOCR(
            params={
                "Global.use_det": True,
                "Global.use_cls": False,
                "Global.use_rec": False,
                "Global.log_level": "error",
                "Global.max_side_len": 4096,
                "Det.limit_side_len": limit_side,
                "Det.limit_type": "max",
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    def boxes(self, frame_HW3: np.ndarray) -> np.ndarray:
        """Detected text quadrilaterals [K, 4, 2] in pixel coordinates of ``frame_HW3`` (RGB)."""
        out = self._engine(
            cv2.cvtColor(frame_HW3, cv2.COLOR_RGB2BGR), use_det=True, use_cls=False, use_rec=False
        )
        b = getattr(out, "boxes", None)
        return np.zeros((0, 4, 2)) if b is None else np.asarray(b)

    def area_ratio(self, frame_HW3: np.ndarray) -> float:
        h, w = frame_HW3.shape[:2]
        return polygons_area_ratio(self.boxes(frame_HW3), h, w)


class TextFilter(RangeFilter):
    """Max text-area ratio over ``num_frames`` evenly spaced frames; keep <= max."""

    name = "text"
    score_name = "text_ratio"
    config: TextConfig

    def __init__(self, config: TextConfig, threads: int = 1) -> None:
        super().__init__(config)
        self.threads = threads
        self._det: TextDetector | None = None

    @property
    def resources(self) -> Resources:
        return Resources(cpus=1)

    def setup(self) -> None:
        if self._det is None:
            self._det = TextDetector(self.config.det_limit_side, self.threads)

    def teardown(self) -> None:
        self._det = None

    def score(self, clip: Clip) -> dict[str, float]:
        self.setup()
        frames_NHW3 = clip.frames.get(clip.frames.evenly(self.config.num_frames))
        return {"text_ratio": max(self._det.area_ratio(f) for f in frames_NHW3)}
