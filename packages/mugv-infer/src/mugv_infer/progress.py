"""Progress of one generation on the command line: a stage bar (rewrite, text, DiT, decode)
with each stage's seconds, and under it the pipeline's own bar of denoising steps (tqdm, on
stderr; stdout stays the command's JSON).

Applied from outside the pipeline: :func:`track_stages` wraps the pipeline's stage methods
(``encode_prompt``, ``denoise``, ``output_frames``) for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from tqdm.auto import tqdm

PIPELINE_STAGES = {"encode_prompt": "text", "denoise": "DiT", "output_frames": "decode"}


class StageProgress:
    """A tqdm bar over named stages; :meth:`stage` times one. ``timings``: seconds per stage
    in the order they ran."""

    def __init__(
        self, stages: list[str], *, done: dict | None = None, enabled: bool = True, file=None
    ):
        """``done``: stages that already ran before the bar (name -> seconds)."""
        self.timings: dict[str, float] = dict(done or {})
        self.bar = tqdm(
            total=len(self.timings) + len(stages), initial=len(self.timings), desc="generate",
            unit="stage", disable=not enabled, file=file or sys.stderr, leave=True, position=0,
        )  # fmt: skip
        if self.timings:
            self.bar.set_postfix_str(self._times())

    def _times(self) -> str:
        return ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_description(f"generate: {name}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            self.bar.set_postfix_str(self._times())
            self.bar.update(1)

    def close(self) -> None:
        self.bar.set_description("generate: done")
        self.bar.close()


@contextlib.contextmanager
def track_stages(pipe, progress: StageProgress) -> Iterator[StageProgress]:
    """Time the pipeline's stages into ``progress`` while the block runs; the denoising
    steps get their own bar (``DiT steps``) under the stage bar."""
    own = vars(pipe)  # methods already overridden on the instance are put back, not deleted
    replaced = {}  # method -> the instance attribute it had (None: the class method)
    for method, stage in PIPELINE_STAGES.items():
        if not hasattr(pipe, method):
            continue
        original = getattr(pipe, method)
        replaced[method] = own.get(method)

        def wrapped(*args, _original=original, _stage=stage, **kwargs):
            with progress.stage(_stage):
                return _original(*args, **kwargs)

        setattr(pipe, method, wrapped)
    previous = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**previous, "desc": "DiT steps", "position": 1, "leave": False})
    try:
        yield progress
    finally:
        for method, before in replaced.items():
            if before is None:
                delattr(pipe, method)  # the instance attribute goes; the class method is back
            else:
                setattr(pipe, method, before)
        pipe._progress_bar_config = previous
