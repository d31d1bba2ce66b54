"""The graphed denoising step (mugv_infer.graphed): the block stack replayed from captured
graphs. On the CPU the graph is the eager stand-in that reads only its static buffers, so
the input copying, keying and the step cache's interplay are checked exactly; the CUDA graph
itself is checked in test_gpu.py."""

from __future__ import annotations

import pytest
import torch
from mugv_infer_fixtures import TEXT_DIM, tiny_transformer


def _inputs(seed, t=2, text_len=6, short=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, t, 4, 4, generator=g)
    text = torch.randn(2, text_len, TEXT_DIM, generator=g)
    mask = torch.ones(2, text_len, dtype=torch.bool)
    mask[1, short:] = False
    return x, torch.tensor([0.3 + seed / 10] * 2), text, mask


@torch.no_grad()
def test_graphed_blocks_replay_equals_eager_for_every_step():
    from mugv_infer.graphed import EagerRecorder, apply_graphed_blocks, remove_graphed_blocks

    model = tiny_transformer()
    steps = [_inputs(s) for s in range(3)]
    eager = [model(*a).sample for a in steps]
    recorder = EagerRecorder()
    runner = apply_graphed_blocks(model, recorder)
    graphed = [model(*a).sample for a in steps]
    assert recorder.captures == 1 and runner.replays == 3
    for e, g in zip(eager, graphed):
        assert torch.equal(e, g)  # new latents, sigma and text copied in at every replay
    # a new text layout (mask) with the same shapes: same graph, index buffers copied
    a = _inputs(7, short=5)
    assert torch.equal(model(*a).sample, (remove_graphed_blocks(model), model(*a).sample)[1])


@torch.no_grad()
def test_new_shapes_capture_new_graphs():
    from mugv_infer.graphed import EagerRecorder, apply_graphed_blocks

    model = tiny_transformer()
    recorder = EagerRecorder()
    runner = apply_graphed_blocks(model, recorder)
    small, long = _inputs(0), _inputs(1, t=3)
    model(*small)
    model(*long)
    model(*small)
    assert recorder.captures == 2 and len(runner.graphs) == 2


def test_failed_capture_falls_back_to_eager_with_a_warning():
    from mugv_infer.graphed import apply_graphed_blocks

    def broken(fn, args):
        raise RuntimeError("operation not permitted when stream is capturing")

    model = tiny_transformer()
    a = _inputs(0)
    with torch.no_grad():
        ref = model(*a).sample
        runner = apply_graphed_blocks(model, broken)
        with pytest.warns(UserWarning, match="capture failed"):
            out = model(*a).sample
        again = model(*a).sample
    assert torch.equal(out, ref) and torch.equal(again, ref)
    assert "stream is capturing" in runner.failed


def test_step_cache_with_graphed_blocks_matches_without(pipe, call_kwargs):
    """The step cache decides outside the graph: a generation with both equals one with the
    cache alone (the same steps skipped, the same video)."""
    from mugv_infer.graphed import EagerRecorder, apply_graphed_blocks

    kw = {**call_kwargs, "num_inference_steps": 4, "output_type": "latent"}
    kw["step_cache_threshold"] = 0.5
    plain = pipe("a cat walks", generator=torch.Generator().manual_seed(0), **kw)
    recorder = EagerRecorder()
    runner = apply_graphed_blocks(pipe.transformer, recorder)
    graphed = pipe("a cat walks", generator=torch.Generator().manual_seed(0), **kw)
    assert plain.step_cache_skipped == graphed.step_cache_skipped > 0
    assert runner.replays == 4 - graphed.step_cache_skipped
    assert torch.equal(plain.frames, graphed.frames)


@torch.no_grad()
def test_moved_weights_capture_again():
    """A graph reads the weights where they were captured: after the blocks' weights move
    (offload and back), the old graphs are dropped and the result follows the new weights."""
    from mugv_infer.graphed import EagerRecorder, apply_graphed_blocks

    model = tiny_transformer()
    recorder = EagerRecorder()
    runner = apply_graphed_blocks(model, recorder)
    a = _inputs(0)
    model(*a)
    for p in model.blocks.parameters():  # new storage, as a move to another device gives
        p.data = p.data * 1.5
    moved = model(*a).sample
    assert recorder.captures == 2 and len(runner.graphs) == 1
    runner.failed = "off"  # eager from here
    assert torch.equal(moved, model(*a).sample)
