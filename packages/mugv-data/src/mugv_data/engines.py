"""Engines place per-source work: in-process (sequential), a local process pool, or Ray.

Each engine builds one :class:`~mugv_data.per_source.SourceProcessor` per worker (stages set up
once per worker) and yields :class:`~mugv_data.per_source.SourceResult` objects as sources finish
(any order; the driver sorts). Worker resources come from the stages' declarations.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.managers import SyncManager
from pathlib import Path

from mugv_formats.lifecycle import die_with_parent

from mugv_data.config import CurateConfig
from mugv_data.lifecycle import TreeReaper
from mugv_data.per_source import SourceProcessor, SourceResult, worker_resources


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class Engine:
    """Maps sources to results."""

    def __init__(self, config: CurateConfig) -> None:
        self.config = config
        self.resources = worker_resources(config)

    def num_workers(self, total_cpus: int) -> int:
        if self.config.engine.workers > 0:
            return self.config.engine.workers
        return max(1, int(total_cpus // max(self.resources.cpus, 1e-6)))

    def map(self, sources: list[Path]) -> Iterator[SourceResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers."""


class SequentialEngine(Engine):
    """Runs everything in the calling process (tests, debugging)."""

    def map(self, sources: list[Path]) -> Iterator[SourceResult]:
        proc = SourceProcessor(self.config)
        proc.setup()
        try:
            for s in sources:
                yield proc(s)
        finally:
            proc.teardown()


_WORKER: SourceProcessor | None = None


def visible_gpus() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES, else torch if importable)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def gpu_slots(num_gpus: int, gpus_per_worker: float, workers: int) -> list[str]:
    """CUDA device id per worker: workers share GPUs ``1 / gpus_per_worker`` at a time.

    Raises ValueError when the stages need GPUs and none are visible."""
    if gpus_per_worker <= 0:
        return []
    if num_gpus == 0:
        raise ValueError("a GPU stage is enabled (resources gpus > 0) but no GPU is visible")
    per_gpu = max(1, int(1.0 / gpus_per_worker))
    n = min(workers, num_gpus * per_gpu)
    return [str(i % num_gpus) for i in range(n)]


def _init_worker(config_json: str, gpu_queue=None, parent_pid: int | None = None) -> None:
    global _WORKER
    die_with_parent(parent_pid)  # a SIGKILLed driver leaves no worker behind
    if gpu_queue is not None:  # before anything imports torch in this fresh (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    _WORKER = SourceProcessor(CurateConfig.model_validate_json(config_json))
    _WORKER.setup()


def _run_worker(path: str) -> SourceResult:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(path)


class ProcessPoolEngine(Engine):
    """Local process pool (spawned workers, so decoders and ONNX threads start clean).

    With GPU stages, workers are limited to what the visible GPUs hold (``1 / gpus`` workers
    per GPU) and each worker is pinned to one GPU through ``CUDA_VISIBLE_DEVICES``."""

    def map(self, sources: list[Path]) -> Iterator[SourceResult]:
        n = min(self.num_workers(available_cpus()), max(1, len(sources)))
        ctx = mp.get_context("spawn")
        queue = None
        slots = gpu_slots(visible_gpus(), self.resources.gpus, n) if self.resources.gpus > 0 else []
        if slots:
            n = len(slots)
            manager = SyncManager(ctx=ctx)
            manager.start(die_with_parent, (os.getpid(),))
            queue = manager.Queue()
            for s in slots:
                queue.put(s)
        with ProcessPoolExecutor(
            max_workers=n,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(self.config.model_dump_json(), queue, os.getpid()),
        ) as pool:
            pending: set[Future] = set()
            it = iter(sources)
            # bounded in-flight work so results stream back and memory stays flat
            for s in it:
                pending.add(pool.submit(_run_worker, str(s)))
                if len(pending) >= 2 * n:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(pool.submit(_run_worker, str(nxt)))


class RayEngine(Engine):
    """Ray actors (one SourceProcessor each) sized by the stages' declared resources.

    ``engine.ray_address`` joins an existing cluster; otherwise a local Ray is started with
    ``engine.ray_num_cpus`` CPUs. Results are returned by value, so workers on other nodes
    need only read access to the source videos.
    """

    def __init__(self, config: CurateConfig) -> None:
        super().__init__(config)
        local = not config.engine.ray_address
        if local:
            # A local Ray runs its workers with this interpreter; Ray's `uv run` hook would
            # otherwise rebuild the environment for every worker (minutes, or failures).
            os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray
        from ray._private import ray_constants

        if local:
            ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False

        self._ray = ray
        self._started = False
        self._reaper: TreeReaper | None = None
        if not ray.is_initialized():
            e = config.engine
            if e.ray_address:
                ray.init(address=e.ray_address, log_to_driver=False)
            else:
                # Ray's own processes (GCS, raylet, its agents) cannot die with us: a watcher
                # kills what is left of our process tree if this driver is SIGKILLed
                self._reaper = TreeReaper()
                ray.init(num_cpus=e.ray_num_cpus, include_dashboard=False, log_to_driver=False)
            self._started = True

    def map(self, sources: list[Path]) -> Iterator[SourceResult]:
        ray = self._ray
        total = int(ray.cluster_resources().get("CPU", 1))
        n = min(self.num_workers(total), max(1, len(sources)))
        r = self.resources
        actor_cls = ray.remote(num_cpus=r.cpus, num_gpus=r.gpus)(_RayWorker)
        actors = [actor_cls.remote(self.config.model_dump_json()) for _ in range(n)]
        pool = ray.util.ActorPool(actors)
        try:
            yield from pool.map_unordered(lambda a, s: a.run.remote(s), [str(s) for s in sources])
        finally:
            for a in actors:
                ray.kill(a)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None


class _RayWorker:
    def __init__(self, config_json: str) -> None:
        self.proc = SourceProcessor(CurateConfig.model_validate_json(config_json))
        self.proc.setup()

    def run(self, path: str) -> SourceResult:
        return self.proc(path)


def make_engine(config: CurateConfig) -> Engine:
    kind = config.engine.kind
    if kind == "sequential":
        return SequentialEngine(config)
    if kind == "process":
        return ProcessPoolEngine(config)
    if kind == "ray":
        return RayEngine(config)
    raise ValueError(f"engine.kind={kind!r} is not sequential, process or ray")
