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


class _TablePreProcess:
    """rapidocr's ``DetPreProcess`` with the per-pixel normalisation done by a 256-entry table.

    Frames are uint8, so each channel takes 256 values: the table is built by rapidocr's own
    ``normalize`` (float64 maths, float32 result), so the network input is bit-identical
    (tested); the table lookup writes straight into the NCHW input, skipping the float64
    intermediate and the transpose copy (~5x cheaper per frame).
    """

    def __init__(self, base) -> None:
        self.base = base
        grid_1x256x3 = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
        table = np.asarray(base.normalize(grid_1x256x3), np.float32)[0]  # [256, 3]
        self.table_3x256 = [np.ascontiguousarray(table[:, c]).reshape(1, 256) for c in range(3)]

    def __call__(self, img_HW3: np.ndarray) -> np.ndarray | None:
        resized_HW3 = self.base.resize(img_HW3)
        if resized_HW3 is None:
            return None
        h, w = resized_HW3.shape[:2]
        x_13HW = np.empty((1, 3, h, w), np.float32)
        for c, plane_HW in enumerate(cv2.split(resized_HW3)):
            x_13HW[0, c] = cv2.LUT(plane_HW, self.table_3x256[c])
        return x_13HW


class TextDetector:
    """Thin wrapper over rapidocr's detection-only pipeline.

    Frames that rapidocr's own pre-processing leaves unchanged (sides within
    ``[min_side_len, max_side_len]``, no vertical padding) go straight to its text detector
    with table normalisation (same boxes, tested); others take rapidocr's full path.
    """

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
        self._det = self._engine._load_det_model()
        fast = _TablePreProcess(self._det.get_preprocess())
        self._det.get_preprocess = lambda: fast
        g = self._engine.cfg.Global
        self._direct = (
            int(g.min_side_len),
            int(g.max_side_len),
            float(g.min_height) if g.use_vertical_padding else -1.0,
            float(g.width_height_ratio) if g.use_vertical_padding else -1.0,
        )

    def _is_direct(self, h: int, w: int) -> bool:
        """True when rapidocr's pre-processing (resize to bounds, vertical padding) is a no-op."""
        lo, hi, min_h, max_ratio = self._direct
        if min(h, w) < lo or max(h, w) > hi:
            return False
        return min_h < 0 or (h > min_h and (max_ratio == -1 or w / h <= max_ratio))

    def boxes(self, frame_HW3: np.ndarray) -> np.ndarray:
        """Detected text quadrilaterals [K, 4, 2] in pixel coordinates of ``frame_HW3`` (RGB)."""
        bgr_HW3 = cv2.cvtColor(frame_HW3, cv2.COLOR_RGB2BGR)
        if self._is_direct(*bgr_HW3.shape[:2]):
            out = self._det(bgr_HW3)
        else:
            out = self._engine(bgr_HW3, use_det=True, use_cls=False, use_rec=False)
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
