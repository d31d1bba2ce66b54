"""The generation settings' bounds and the release's negative prompt, without diffusers.

The settings (:mod:`mugv_infer.config`) are checked before any model is built, so a user
error answers at once; :mod:`mugv_infer.pipeline` (diffusers, seconds to import on 2 cores)
checks its call arguments against the same values and re-exports them.
"""

from __future__ import annotations

DEFAULT_NEGATIVE_PROMPT = (
    "ugly, blurry, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, "
    "fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
    "signature, watermark, username, blurry"
)
"""The release's negative prompt."""

MAX_GUIDANCE = 100.0
MAX_FPS = 1000.0
"""Upper bound of fps values (the release uses 30 and 21)."""
MAX_STEPS = 1000
