"""GraphedStep: its logic on the CPU with the recorded-call stand-in for CUDA graphs (static
input buffers, warm-up, one graph per shape, re-capture, the eager fallback and its
diagnostics), and on a GPU the real thing: a Megatron DDP + distributed optimizer step of the
debug DiT replayed as a CUDA graph against the same step run eagerly."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from mugv_dit.optim.graphed_step import (
    CaptureFailure,
    GraphedStep,
    RecordedCalls,
    capturable_adam,
    describe_failure,
    step_phase,
)


class CountingBackend(RecordedCalls):
    """Recorded calls that count warm-up contexts, captures and replays."""

    def __init__(self) -> None:
        self.streams = self.captured = self.replayed = 0

    def stream(self):
        self.streams += 1
        return super().stream()

    def capture(self, fn):
        self.captured += 1
        return super().capture(fn)

    def replay(self, graph):
        self.replayed += 1
        return super().replay(graph)


def _linear_step(weight: torch.Tensor, seen: list):
    def step(x, y):
        seen.append((x, y))
        return ((x @ weight - y) ** 2).sum()

    return step


def test_static_buffers_warmup_capture_and_replay():
    """The first ``warmup`` calls run eagerly (inside the backend's stream), the next captures
    and replays, later ones replay; the step always sees the same static tensors, refilled with
    each call's values (a stale buffer would give the previous batch's loss)."""
    w = torch.randn(3, 2, dtype=torch.float64)
    seen: list = []
    backend = CountingBackend()
    graphed = GraphedStep(_linear_step(w, seen), warmup=2, backend=backend)
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        x = torch.randn(4, 3, generator=g, dtype=torch.float64)
        y = torch.randn(4, 2, generator=g, dtype=torch.float64)
        got = graphed(x, y)
        want = ((x @ w - y) ** 2).sum()
        assert float(got) == float(want), i
        assert seen[-1][0] is not x and torch.equal(seen[-1][0], x)
    assert (backend.streams, backend.captured, backend.replayed) == (2, 1, 4)
    assert (graphed.captures, graphed.replays, graphed.graphs) == (1, 4, 1)
    statics = {id(t) for pair in seen for t in pair}
    assert len(statics) == 2  # one x buffer and one y buffer for every call


def test_one_graph_per_shape_and_recapture_after_eviction():
    w = torch.randn(3, 2)
    backend = CountingBackend()
    kept = []
    graphed = GraphedStep(
        _linear_step(w, []),
        warmup=1,
        max_graphs=2,
        backend=backend,
        keepalive=lambda: kept.append(object()) or kept[-1],
    )

    def call(rows: int, key=None):
        x, y = torch.randn(rows, 3), torch.randn(rows, 2)
        torch.testing.assert_close(graphed(x, y, key=key), ((x @ w - y) ** 2).sum())

    call(4)
    call(4)  # warm -> capture 1
    call(5)  # new shape: warm-up
    call(5)  # capture 2
    call(4)  # replay of the first graph, no new capture
    assert (backend.streams, backend.captured) == (2, 2)
    call(4, key="other")  # same shapes, another key (e.g. other text lengths): a new bucket
    call(4, key="other")  # capture 3, evicts the least recently used (rows=5)
    assert (backend.streams, backend.captured, graphed.graphs) == (3, 3, 2)
    call(5)  # the evicted shape comes back: one eager step (caches), then its capture
    assert (backend.streams, backend.captured, graphed.graphs) == (4, 3, 1)
    call(5)
    assert (backend.streams, backend.captured, graphed.graphs) == (4, 4, 2)
    assert len(kept) == 4  # one keepalive per capture, held by the live graphs' entries
    assert {id(e.keepalive) for e in graphed._entries.values()} == {id(k) for k in kept[2:]}
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedStep(lambda: None, max_graphs=0)
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(lambda: None, warmup=0)


class LegacyStreamCapture(RecordedCalls):
    """Mimics torch on the first GPU run: the step raises inside the capture (the backward
    touching the legacy stream), then ``capture_end`` raises a second error."""

    def capture(self, fn):
        try:
            fn()
        finally:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


def _failing_in_backward(calls: list):
    capturing = [False]

    def step(x):
        calls.append(x.clone())
        step_phase("forward")
        loss = (x * 2).sum()
        step_phase("backward")
        if capturing[0]:
            raise RuntimeError(
                "CUDA error: operation would make the legacy stream depend on a capturing "
                "blocking stream"
            )
        return loss

    return step, capturing


def test_failed_capture_falls_back_to_eager_and_names_the_op():
    calls: list = []
    step, capturing = _failing_in_backward(calls)
    resets = []
    backend = LegacyStreamCapture()
    graphed = GraphedStep(step, warmup=1, backend=backend, reset=lambda: resets.append(1))
    x0, x1, x2 = torch.ones(3), torch.full((3,), 2.0), torch.full((3,), 3.0)
    assert float(graphed(x0)) == 6.0  # warm-up
    backend.capture = _arm(backend.capture, capturing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert float(graphed(x1)) == 12.0  # the capture fails, this step runs eagerly
    assert float(graphed(x2)) == 18.0  # eager from now on
    failure = graphed.failure
    assert isinstance(failure, CaptureFailure)
    assert failure.phase == "capture (backward)"
    assert "test_graphed_step.py" in failure.op and "raise RuntimeError(" in failure.op
    assert "legacy stream" in failure.error and "previous error during capture" in failure.error
    assert "on_capture_stream" in failure.hint
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "capture (backward)" in messages[0]
    assert resets == [1]
    # the eager re-run of the failed step and the next step saw their own inputs
    assert [float(c[0]) for c in calls] == [1.0, 2.0, 2.0, 3.0]
    assert graphed.captures == 0 and graphed.graphs == 0


def _arm(capture, capturing):
    def wrapped(fn):
        capturing[0] = True
        try:
            return capture(fn)
        finally:
            capturing[0] = False

    return wrapped


class EndFailure(RecordedCalls):
    def capture(self, fn):
        from mugv_dit.optim.graphed_step import CAPTURE_END

        fn()
        step_phase(CAPTURE_END)
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


def test_capture_end_failure_and_no_fallback():
    graphed = GraphedStep(lambda x: x.sum(), warmup=1, backend=EndFailure())
    graphed(torch.ones(2))
    with pytest.warns(RuntimeWarning, match="capture end"):
        assert float(graphed(torch.ones(2))) == 2.0
    assert "host synchronisation" in graphed.failure.hint
    strict = GraphedStep(lambda x: x.sum(), warmup=1, fallback=False, backend=EndFailure())
    strict(torch.ones(2))
    with pytest.raises(RuntimeError, match="not permitted"):
        strict(torch.ones(2))
    assert strict.failure.phase == "capture end"


def test_describe_failure_walks_to_the_root_error():
    try:
        try:
            raise ValueError("first")
        except ValueError:
            raise RuntimeError("second") from None
    except RuntimeError as exc:
        plain = describe_failure(exc, "x")
    assert plain.error.startswith("RuntimeError: second")  # from None: no root to walk to
    try:
        try:
            raise ValueError("first")
        except ValueError as inner:
            raise RuntimeError("second") from inner
    except RuntimeError as exc:
        chained = describe_failure(exc, "x")
    assert chained.error == "ValueError: first (then RuntimeError: second)"
    assert 'raise ValueError("first")' in chained.op


def test_capturable_adam_moves_lr_and_steps_to_tensors():
    p = torch.nn.Parameter(torch.zeros(3))
    adam = torch.optim.AdamW([p], lr=0.5, fused=True)
    adam.state[p] = {"step": torch.tensor(3.0)}
    lrs = capturable_adam(adam)
    assert len(lrs) == 1 and adam.param_groups[0]["lr"] is lrs[0]
    assert float(lrs[0]) == 0.5 and adam.param_groups[0]["capturable"]
    graphed = GraphedStep(lambda: None, backend=RecordedCalls())
    graphed.bind_lr(lrs)
    graphed.set_lr(0.25)
    assert float(adam.param_groups[0]["lr"]) == 0.25
    with pytest.raises(ValueError, match="fused"):
        capturable_adam(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=False))


# -- the Megatron step: CPU harness (slow), GPU capture -------------------------------------
@pytest.mark.slow
def test_graphed_megatron_step_harness_on_cpu(megatron_single):
    """The GPU parity check's own code on the CPU with recorded calls (whole step and
    forward+backward graphed, a shape change): the harness runs and agrees with eager."""
    from mugv_dit.megatron_patches.cuda_on_cpu import cpu_megatron

    with cpu_megatron():
        for mode in ("whole", "fwd_bwd"):
            _cuda_parity(mode, device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_step_matches_eager_on_cuda():
    """Nine steps of the debug DiT at head dim 72 (bf16, Megatron DDP + distributed optimizer
    + the sync-free fused AdamW step), a new batch every step, a second latent shape from step
    7: the whole step graphed, and forward+backward graphed with the optimizer eager, against
    the same steps run eagerly (a fresh one-process NCCL group: this file as a script)."""
    import os
    import subprocess

    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    res = subprocess.run(
        [sys.executable, __file__, "cuda-graph-parity"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(res.stdout[-4000:])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "graph parity: whole ok" in res.stdout
    assert "graph parity: fwd_bwd ok" in res.stdout


def _cuda_setup(attention: str, device: str = "cuda"):
    """(model, ddp, optimizer, sync-free step) over the debug DiT on CUDA, DDP built on the
    capture stream."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from mugv_dit import build_model
    from mugv_dit.config import RuntimeConfig, model_preset
    from mugv_dit.megatron_patches.multi_tensor import install_foreach_multi_tensor_ops
    from mugv_dit.optim.fused_adam import enable_fused_adam
    from mugv_dit.optim.graphed_step import on_capture_stream
    from mugv_dit.optim.sync_free_step import SyncFreeStep

    install_foreach_multi_tensor_ops()
    # head dim 72 as in the real models: on Hopper "auto" attention is FA4 (padded to 96)
    cfg = model_preset("debug", hidden_size=144, num_heads=2)
    torch.manual_seed(0)
    runtime = RuntimeConfig(fused_ops=True, attention_backend=attention)
    model = build_model(cfg, dtype=torch.bfloat16, runtime=runtime).to(device).train()
    with on_capture_stream():
        ddp = DistributedDataParallel(
            model.config,
            DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=True,
                use_distributed_optimizer=True,
                bucket_size=4096,
            ),
            model,
        )
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.1,
            bf16=True,
            params_dtype=torch.bfloat16,
            use_distributed_optimizer=True,
            clip_grad=1.0,
        ),
        [ddp],
    )
    assert enable_fused_adam(opt) >= 1
    return cfg, model, ddp, opt, SyncFreeStep(opt)


def _cuda_parity(mode: str, attention: str = "auto", device: str = "cuda") -> None:
    from megatron.core.distributed import finalize_model_grads
    from mugv_dit.model import PackedText

    def run(graphed_mode: str | None):
        cfg, model, ddp, opt, stepper = _cuda_setup(attention, device)
        if mode == "whole":  # the eager references step with the same (tensor) lr
            from mugv_dit.optim.graphed_step import capturable_adam

            capturable_adam(opt)
        text = PackedText.from_list(
            [torch.randn(7, cfg.text_dim, device=device, dtype=torch.bfloat16)]
        )
        fps = torch.full((1,), 24.0, device=device)

        def fwd_bwd(x, sigma, target):
            step_phase("forward")
            ddp.zero_grad_buffer()
            out = ddp(x, sigma, text, fps_B=fps)
            loss = (out[:, : cfg.in_channels] - target).pow(2).mean()
            step_phase("backward")
            loss.backward()
            step_phase("grad reduce")
            finalize_model_grads([ddp])
            return loss.detach()

        def whole(x, sigma, target):
            loss = fwd_bwd(x, sigma, target)
            step_phase("optimizer")
            _, norm, _ = stepper.step()
            return loss, norm

        graph = None
        if graphed_mode == "whole":
            graph = GraphedStep(whole, warmup=2)
        elif graphed_mode == "fwd_bwd":
            graph = GraphedStep(fwd_bwd, warmup=2)
        losses, norms = [], []
        g = torch.Generator().manual_seed(1)
        for i in range(9):
            t = 2 if i < 6 else 4  # a second latent shape: its own warm-up and graph
            shape = (1, cfg.in_channels, t, 8, 8)
            x = torch.randn(shape, generator=g).to(device, torch.bfloat16)
            target = torch.randn(shape, generator=g).to(device)
            sigma = torch.rand(1, generator=g).to(device)
            if graphed_mode == "whole":
                loss, norm = graph(x, sigma, target)
            elif graphed_mode == "fwd_bwd":
                loss = graph(x, sigma, target)
                _, norm, _ = stepper.step()
            else:
                loss, norm = whole(x, sigma, target)
            losses.append(float(loss))  # read before the next replay refills it
            norms.append(float(norm))
        params = [p.detach().float().clone() for p in model.parameters()]
        return losses, norms, params, graph

    eager_a = run(None)
    eager_b = run(None)
    got = run(mode)
    graph = got[3]
    if graph.failure is not None:  # on stdout for the log: phase, op, error, hint
        print(f"graph parity: {mode} FAILED: {graph.failure.message()}", flush=True)
    assert graph.failure is None and graph.captures == 2, (graph.failure, graph.captures)
    # the eager path's own run-to-run spread (atomics in attention backward kernels)
    noise = max(abs(a - b) for a, b in zip(eager_a[0], eager_b[0]))
    for i, (want, have) in enumerate(zip(eager_a[0], got[0])):
        tol = 4 * noise + (0.0 if noise == 0 else 2**-8 * abs(want))
        assert abs(have - want) <= tol, (mode, i, want, have, noise)
    assert got[0][0] == eager_a[0][0]  # the first step: same weights, same kernels, bit equal
    if noise == 0:
        assert got[1] == eager_a[1] and all(
            torch.equal(a, b) for a, b in zip(eager_a[2], got[2])
        ), "deterministic eager path, but the graphed weights differ"
    print(f"graph parity: {mode} ok (eager spread {noise:.3g}, losses {got[0]})", flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["cuda-graph-parity"]:
    from mugv_dit.parallel import destroy_distributed, init_distributed

    init_distributed(1, backend="nccl")
    failed = 0
    try:
        for mode in ("whole", "fwd_bwd"):  # both, even when the first fails
            try:
                _cuda_parity(mode)
            except AssertionError as exc:
                print(f"graph parity: {mode} FAILED: {exc!r}", flush=True)
                failed += 1
    finally:
        destroy_distributed()
    sys.exit(1 if failed else 0)
