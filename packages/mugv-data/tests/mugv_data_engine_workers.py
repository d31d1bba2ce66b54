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
