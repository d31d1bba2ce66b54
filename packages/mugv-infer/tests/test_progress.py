"""The stage bar of one generation (issue 27): stages counted and timed in the order they ran,
stages done before the bar (the prompt rewrite) shown as done, the pipeline's methods wrapped
only inside the ``with`` block."""

from __future__ import annotations

import io
import time

import pytest


class FakePipe:
    """The three stage methods of MUGVPipeline and its progress-bar settings."""

    def __init__(self):
        self._progress_bar_config = {"disable": False}
        self.calls = []

    def set_progress_bar_config(self, **kwargs):
        self._progress_bar_config = kwargs

    def encode_prompt(self, text):
        self.calls.append(("text", text, dict(self._progress_bar_config)))
        return text.upper()

    def denoise(self, steps):
        time.sleep(0.02)
        self.calls.append(("DiT", steps, dict(self._progress_bar_config)))
        return steps * 2

    def output_frames(self, x):
        self.calls.append(("decode", x, None))
        return x + 1

    def __call__(self, text, steps):
        self.encode_prompt(text)
        return self.output_frames(self.denoise(steps))


def test_stages_are_counted_timed_and_the_methods_restored():
    from mugv_infer.progress import StageProgress, track_stages

    pipe, sink = FakePipe(), io.StringIO()
    progress = StageProgress(["text", "DiT", "decode"], done={"rewrite": 1.25}, file=sink)
    assert (progress.bar.n, progress.bar.total) == (1, 4)
    with track_stages(pipe, progress):
        assert pipe("a cat", 3) == 7  # the wrapped methods return what the originals do
    progress.close()
    assert list(progress.timings) == ["rewrite", "text", "DiT", "decode"]
    assert progress.timings["rewrite"] == 1.25
    assert progress.timings["DiT"] >= 0.02
    assert progress.bar.n == 4
    # inside the block the step bar sits under the stage bar, named; afterwards as before
    assert pipe.calls[1][2] == {"disable": False, "desc": "DiT steps", "position": 1, "leave": False}
    assert pipe._progress_bar_config == {"disable": False}
    assert not {"encode_prompt", "denoise", "output_frames"} & set(vars(pipe))
    text = sink.getvalue()
    assert "rewrite 1.2s" in text and "generate: done" in text
    for stage in ("text", "DiT", "decode"):
        assert f"{stage} " in text


def test_a_failing_stage_is_timed_and_the_methods_restored():
    from mugv_infer.progress import StageProgress, track_stages

    pipe = FakePipe()

    def boom(steps):
        raise RuntimeError("out of memory")

    pipe.denoise = boom  # an instance attribute: the wrapper must put it back, not delete it
    progress = StageProgress(["text", "DiT", "decode"], enabled=False)
    with pytest.raises(RuntimeError, match="out of memory"), track_stages(pipe, progress):
        pipe("a cat", 3)
    assert list(progress.timings) == ["text", "DiT"]
    assert pipe.denoise is boom
    assert "encode_prompt" not in vars(pipe)
