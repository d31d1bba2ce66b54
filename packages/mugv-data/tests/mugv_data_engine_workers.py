"""Worker builders for the engine tests, in a module of their own: a spawned pool process
imports a worker's builder by module name, and in the whole suite's run a test file's module
name is not importable there (``packages`` is not a package)."""

from __future__ import annotations


def build_square(config):
    return lambda u: u * u


class Answerer:
    """A stand-in model server's worker: doubles numbers, fails on ``"fail"``, tells its pid."""

    def __init__(self, fail_setup: bool = False, setup_s: float = 0.0) -> None:
        self.fail_setup, self.setup_s = fail_setup, setup_s
        self.ready = False

    def setup(self) -> None:
        import time

        time.sleep(self.setup_s)  # a model that takes long to load
        if self.fail_setup:
            raise OSError("no weights at /nonexistent/model")
        self.ready = True

    def __call__(self, request):
        import os

        assert self.ready, "setup() was not called before the first request"
        if request == "fail":
            raise ValueError("cannot score this request")
        if request == "pid":
            return os.getpid()
        if request == "gpu":
            return os.environ.get("CUDA_VISIBLE_DEVICES")
        return request * 2


def build_answerer(config):
    return Answerer()


def build_answerer_failing_setup(config):
    return Answerer(fail_setup=True)


def build_answerer_slow_setup(config):
    return Answerer(setup_s=300.0)


def _take_fault(name: str) -> bool:
    """Whether this process takes the one-shot fault ``name`` (a file ``name`` in the folder
    ``$MUGV_TEST_MODEL_FAULTS``, renamed by the first process that sees it)."""
    import os
    from pathlib import Path

    d = os.environ.get("MUGV_TEST_MODEL_FAULTS")
    if not d:
        return False
    try:
        os.rename(Path(d) / name, Path(d) / f"{name}.taken.{os.getpid()}")
    except FileNotFoundError:
        return False
    return True


def _fault_then(kind: str) -> None:
    import os
    import signal
    import time

    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of a request
    time.sleep(3600)  # "hang": a model that never returns


class FaultyAnswerer(Answerer):
    """The stand-in server with faults on request: ``("die"|"hang", "once"|"always")``, where
    "once" takes the fault file of that name (see :func:`_take_fault`)."""

    def __call__(self, request):
        if isinstance(request, tuple) and request[0] in ("die", "hang"):
            kind, when = request
            if when == "always" or _take_fault(kind):
                _fault_then(kind)
            return "survived"
        return super().__call__(request)


def build_faulty_answerer(config):
    return FaultyAnswerer()


class FakeModels:
    """A tiny fake of :class:`mugv_data.model_pool.ModelWorker` for the model servers: the
    ``aesthetic`` score of a clip is the mean of the frames it was sent, x 10 / 255, and a clip
    under ``filters.aesthetic.min`` is rejected; it dies or hangs once when a fault file
    ``die`` / ``hang`` is put into ``$MUGV_TEST_MODEL_FAULTS``."""

    def __init__(self, config) -> None:
        self.min = config.filters.aesthetic.min

    def __call__(self, request):
        import numpy as np

        for kind in ("die", "hang"):
            if _take_fault(kind):
                _fault_then(kind)
        _source, packed = request
        out = []
        for d in packed:
            score = float(np.asarray(d["frames"], np.float64).mean() * 10.0 / 255.0)
            verdict = tuple(d["verdict"])
            if verdict[0] is None and score < self.min:
                verdict = ("aesthetic", f"aesthetic {score:.3f} < min {self.min}")
            scores = {**d["scores"], "aesthetic": score}
            out.append({"key": d["key"], "scores": scores, "verdict": verdict,
                        "clip_embedding": None})  # fmt: skip
        return out


def build_fake_models(config):
    return FakeModels(config)


def build_gpu_reporter(config):
    """A worker that answers every unit with the ``CUDA_VISIBLE_DEVICES`` it was pinned to."""
    import os

    return lambda unit: os.environ.get("CUDA_VISIBLE_DEVICES")
