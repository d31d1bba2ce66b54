"""Engines place work units on workers: in-process (sequential), a local process pool, or Ray.

A :class:`WorkerSpec` names what a worker runs: ``build(config)`` is called once per worker
(models and decoders set up once) and returns a callable applied to each work unit (a source
path, a batch of clips to caption, the dedup of an embedding store); ``resources`` are what
one worker needs. :meth:`Engine.map` streams units in and ``(unit, result)`` pairs out as they
finish (any order) with bounded work in flight: at most ``engine.max_in_flight`` units per
worker are submitted and not yet returned, so the driver never holds more than that many
results, whatever the number of units (backpressure).

On Ray each worker is an actor declared with the spec's ``num_cpus``, ``num_gpus`` and
``memory``; an actor lost with its node is replaced and its units are run again (a unit is
retried ``engine.max_unit_attempts`` times in all). The pool shrinks when actors are lost and
a new actor is started only when none is left. The model pool's actors (:meth:`Engine.start_pool`)
are restarted by Ray instead, and a hung one is killed after
``engine.model_pool.request_timeout_s`` (``mugv_data.model_pool.RayPoolConnections``).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from mugv_formats.lifecycle import die_with_parent, start_manager

from mugv_data.config import CurateConfig
from mugv_data.lifecycle import TreeReaper
from mugv_data.stages.base import Resources


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker runs. ``build`` must be a module-level function (workers import it by
    name); the callable it returns may have a ``teardown()`` method."""

    name: str
    build: Callable[[CurateConfig], Callable[[Any], Any]]
    resources: Resources
    local_node: bool = False
    """Run on the driver's node (a unit that reads or writes the output folder itself)."""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class Engine:
    """Maps work units to results on workers built from a :class:`WorkerSpec`."""

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def num_workers(self, resources: Resources, total_cpus: float) -> int:
        if self.config.engine.workers > 0:
            return self.config.engine.workers
        return max(1, int(total_cpus // max(resources.cpus, 1e-6)))

    #: whether :meth:`start_pool` exists (a model pool beside the per-source workers)
    has_pools = False

    def map(self, spec: WorkerSpec, units: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """``(unit, result)`` for every unit, as they finish."""
        raise NotImplementedError

    def start_pool(self, spec: WorkerSpec, n: int, max_restarts: int) -> Any:
        """``n`` long-lived workers running ``spec`` (the model pool); returns what a worker
        built by a later :meth:`map` needs to reach them."""
        raise NotImplementedError(f"{type(self).__name__} has no worker pools")

    def stop_pools(self) -> None:
        """Stop the pools (their resources go to later stages)."""

    def close(self) -> None:
        """Release workers."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _teardown(worker: Any) -> None:
    td = getattr(worker, "teardown", None)
    if td is not None:
        td()


class SequentialEngine(Engine):
    """Runs everything in the calling process (tests, debugging)."""

    def map(self, spec: WorkerSpec, units: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        worker = None
        try:
            for u in units:
                if worker is None:  # built only when there is work
                    worker = spec.build(self.config)
                yield u, worker(u)
        finally:
            if worker is not None:
                _teardown(worker)


_WORKER: Any = None


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


def visible_device_ids() -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries of this process (or ``0..n-1``): a child pinned to
    the k-th visible GPU gets the k-th entry, so a driver limited to GPUs 2,3 pins to 2 and 3."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(visible_gpus())]


def pinned_devices(num_gpus: int, gpus_per_worker: float, workers: int) -> list[str]:
    """:func:`gpu_slots` as ``CUDA_VISIBLE_DEVICES`` values for the children."""
    ids = visible_device_ids()
    return [ids[int(s)] for s in gpu_slots(num_gpus, gpus_per_worker, workers)]


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


def _init_worker(build, config_json: str, gpu_queue=None, parent_pid: int | None = None) -> None:
    global _WORKER
    die_with_parent(parent_pid)  # a SIGKILLed driver leaves no worker behind
    if gpu_queue is not None:  # before anything imports torch in this fresh (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()
    _WORKER = build(CurateConfig.model_validate_json(config_json))


def _run_worker(unit: Any) -> Any:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(unit)


def describe(unit: Any) -> str:
    """A unit, short, for messages (a caption unit by its name, not its clips' bytes)."""
    if isinstance(unit, dict) and "name" in unit:
        return repr(unit["name"])
    text = repr(unit)
    return text if len(text) <= 200 else text[:200] + "..."


def _peek(units: Iterable[Any], n: int) -> tuple[list[Any], Iterator[Any]]:
    """The first ``n`` units and an iterator over the rest."""
    it = iter(units)
    head = []
    for u in it:
        head.append(u)
        if len(head) >= n:
            break
    return head, it


class ProcessPoolEngine(Engine):
    """Local process pool (spawned workers, so decoders and ONNX threads start clean).

    With GPU stages, workers are limited to what the visible GPUs hold (``1 / gpus`` workers
    per GPU) and each worker is pinned to one GPU through ``CUDA_VISIBLE_DEVICES``.
    :meth:`start_pool` starts server processes (the model pool, :mod:`mugv_data.model_servers`)
    that the workers of later maps send requests to; workers then size on the CPUs left."""

    has_pools = True

    def __init__(self, config: CurateConfig) -> None:
        super().__init__(config)
        self.pools: list[Any] = []  # ModelServers
        self._reserved_cpus = 0.0

    def start_pool(self, spec: WorkerSpec, n: int, max_restarts: int) -> Any:
        """``n`` server processes running ``spec`` (each builds it once, pinned to a GPU when
        it declares one); returns their :class:`~mugv_data.model_servers.ServerAddresses`.
        A server that dies or hangs is replaced at most ``max_restarts`` times."""
        from mugv_data.model_servers import ModelServers

        r = spec.resources
        gpus: list[str | None] = [None] * n
        if r.gpus > 0:
            visible = visible_gpus()
            slots = pinned_devices(visible, r.gpus, n)  # raises when no GPU is visible
            if len(slots) < n:
                raise ValueError(
                    f"{spec.name}: {n} servers declare {n * r.gpus:g} GPU in all but "
                    f"{visible} GPU(s) are visible (fewer servers, or a smaller gpus share)"
                )
            gpus = list(slots)
        servers = ModelServers(spec.name, spec.build, self.config, gpus, max_restarts)
        self.pools.append(servers)
        self._reserved_cpus += n * r.cpus
        return servers.addresses

    def stop_pools(self) -> None:
        for servers in self.pools:
            servers.stop()
        self.pools.clear()
        self._reserved_cpus = 0.0

    def close(self) -> None:
        self.stop_pools()

    def map(self, spec: WorkerSpec, units: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        r = spec.resources
        n = self.num_workers(r, max(1.0, available_cpus() - self._reserved_cpus))
        per = self.config.engine.max_in_flight
        head, rest = _peek(units, n * per)
        if not head:
            return
        n = min(n, len(head))
        ctx = mp.get_context("spawn")
        queue = None
        slots = pinned_devices(visible_gpus(), r.gpus, n) if r.gpus > 0 else []
        if slots:
            n = len(slots)
            manager = start_manager()
            queue = manager.Queue()
            for s in slots:
                queue.put(s)
        with ProcessPoolExecutor(
            max_workers=n,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(spec.build, self.config.model_dump_json(), queue, os.getpid()),
        ) as pool:
            pending: dict[Future, Any] = {}
            todo = deque(head)

            def fill() -> None:
                while len(pending) < n * per:
                    if not todo:
                        nxt = next(rest, None)
                        if nxt is None:
                            return
                        todo.append(nxt)
                    u = todo.popleft()
                    pending[pool.submit(_run_worker, u)] = u

            try:
                fill()
                while pending:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in done:
                        u = pending.pop(fut)
                        yield u, fut.result()
                    fill()
            finally:  # an error (e.g. a lost model pool) or an early stop: run nothing more
                pool.shutdown(wait=True, cancel_futures=True)


class RayEngine(Engine):
    """Ray actors (one worker each) declared with the spec's resources, fed with bounded work
    in flight; the units of an actor that dies (its node lost, its process killed) are run
    again on the others.

    ``engine.ray_address`` joins an existing cluster; otherwise a local Ray is started with
    ``engine.ray_num_cpus`` CPUs. Units and results travel by value: per-source workers need
    only read access to the source videos, caption units carry their clips' bytes, and the
    dedup unit (``local_node``) runs on the driver's node, where it reads the staging folder.
    """

    has_pools = True

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
                try:
                    ray.init(num_cpus=e.ray_num_cpus, include_dashboard=False, log_to_driver=False)
                except BaseException:  # e.g. "the current node timed out during startup"
                    with contextlib.suppress(Exception):
                        ray.shutdown()
                    self._reaper.kill_started()  # what the failed start left running
                    self._reaper = None
                    raise
            self._started = True
        #: node id -> units that ran there (the two-node test reads it)
        self.units_per_node: dict[str, int] = {}
        self._pools: list[Any] = []
        #: CPU / GPU / memory (bytes) held by pool actors: other workers size themselves on
        #: what is left, so none of them waits for resources the pool never frees
        self._reserved: dict[str, float] = {"CPU": 0.0, "GPU": 0.0, "memory": 0.0}

    def actor_options(self, r: Resources) -> dict[str, Any]:
        """Ray options of one worker actor: the spec's declared resources."""
        opts: dict[str, Any] = {"num_cpus": r.cpus, "num_gpus": r.gpus}
        if r.memory_mb > 0:
            opts["memory"] = int(r.memory_mb * (1 << 20))
        return opts

    def _free(self) -> dict[str, float]:
        """The cluster's resources less what the pools hold."""
        total = dict(self._ray.cluster_resources())
        for k, v in self._reserved.items():
            total[k] = total.get(k, 0.0) - v
        return total

    def _num_actors(self, r: Resources) -> int:
        total = self._free()
        n = self.num_workers(r, total.get("CPU", 1))
        if self._reserved["CPU"] > 0 and r.cpus > 0:  # beside a pool: only what fits now
            if total.get("CPU", 0) < r.cpus:
                raise ValueError(
                    f"a worker declares {r.cpus:g} CPU but the Ray cluster has "
                    f"{total.get('CPU', 0):g} left beside engine.model_pool's actors "
                    "(fewer or smaller pool actors, or more CPUs)"
                )
            n = min(n, int(total["CPU"] // r.cpus))
        if r.gpus > 0:
            gpus = total.get("GPU", 0)
            if gpus == 0:
                raise ValueError(
                    "a GPU stage is enabled (resources gpus > 0) but the Ray cluster has no GPU"
                )
            n = min(n, max(1, int(gpus // r.gpus)))
        if r.memory_mb > 0:
            mem_mb = total.get("memory", 0) / (1 << 20)
            if mem_mb < r.memory_mb:
                raise ValueError(
                    f"a worker declares {r.memory_mb:.0f} MB of memory but the Ray cluster "
                    f"offers {mem_mb:.0f} MB (lower decode.cache_mb, or give nodes --memory)"
                )
            n = min(n, max(1, int(mem_mb // r.memory_mb)))
        return n

    def start_pool(self, spec: WorkerSpec, n: int, max_restarts: int) -> list[Any]:
        """``n`` long-lived actors running ``spec`` (e.g. the model pool), declared with its
        resources; Ray restarts a lost (or killed as hung) one up to ``max_restarts`` times and
        reruns none of its calls (``max_task_retries=0``): the pool's client sends them again
        (:class:`mugv_data.model_pool.RayPoolConnections`). Each actor has a ``control``
        concurrency group of one thread beside ``run``'s, so ``whoami`` answers while a call
        hangs. Killed by :meth:`close`."""
        r = spec.resources
        total = self._free()
        for key, need in (("CPU", n * r.cpus), ("GPU", n * r.gpus)):
            if need > total.get(key, 0):
                raise ValueError(
                    f"{spec.name}: {n} actors declare {need:g} {key} in all but the Ray "
                    f"cluster has {total.get(key, 0):g}"
                )
        self._reserved["CPU"] += n * r.cpus
        self._reserved["GPU"] += n * r.gpus
        self._reserved["memory"] += n * r.memory_mb * (1 << 20)
        opts = self.actor_options(r)
        opts.update(
            max_restarts=max_restarts,
            max_task_retries=0,
            concurrency_groups={RAY_CONTROL_GROUP: 1},
        )
        actor_cls = self._ray.remote(**opts)(_RayWorker)
        config_json = self.config.model_dump_json()
        actors = [actor_cls.remote(spec.build, config_json, True) for _ in range(n)]
        self._pools.extend(actors)
        return actors

    def map(self, spec: WorkerSpec, units: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        ray = self._ray
        from ray.exceptions import (
            ObjectLostError,
            RayActorError,
            RayTaskError,
            WorkerCrashedError,
        )

        from mugv_data.decode import DecoderUnavailable
        from mugv_data.model_pool import ModelPoolUnavailable

        per = self.config.engine.max_in_flight
        max_attempts = self.config.engine.max_unit_attempts
        r = spec.resources
        n = self._num_actors(r)
        head, rest = _peek(units, n * per)
        if not head:
            return
        n = min(n, len(head))
        opts = self.actor_options(r)
        if spec.local_node:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
        actor_cls = ray.remote(**opts)(_RayWorker)
        config_json = self.config.model_dump_json()
        actors = [actor_cls.remote(spec.build, config_json) for _ in range(n)]
        load = {a: 0 for a in actors}
        pending: dict[Any, tuple[Any, Any, int]] = {}  # ref -> (actor, unit, attempt)
        todo: deque[tuple[Any, int]] = deque((u, 1) for u in head)

        def fill() -> None:
            while len(pending) < len(load) * per:
                if not todo:
                    nxt = next(rest, None)
                    if nxt is None:
                        return
                    todo.append((nxt, 1))
                u, attempt = todo.popleft()
                actor = min(load, key=load.__getitem__)
                load[actor] += 1
                pending[actor.run.remote(u)] = (actor, u, attempt)

        try:
            fill()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    actor, u, attempt = pending.pop(ref)
                    try:
                        node, _pid, result = ray.get(ref)
                    except RayTaskError as e:  # errors that stop the run: their own message
                        if isinstance(e.cause, (ModelPoolUnavailable, DecoderUnavailable)):
                            raise e.cause from None
                        raise
                    except (RayActorError, WorkerCrashedError, ObjectLostError) as e:
                        if attempt >= max_attempts:
                            raise RuntimeError(
                                f"{spec.name}: unit {describe(u)} lost its worker {attempt} times; last: "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            ) from None
                        todo.appendleft((u, attempt + 1))
                        # the remaining actors take its units; a replacement is started only
                        # when none remain (it waits for the cluster to have room): one made
                        # while the cluster is full would hold units it never runs
                        load.pop(actor, None)
                        if not load:
                            new = actor_cls.remote(spec.build, config_json)
                            load[new] = 0
                            actors.append(new)
                        continue
                    if actor in load:
                        load[actor] -= 1
                    self.units_per_node[node] = self.units_per_node.get(node, 0) + 1
                    yield u, result
                fill()
        finally:
            for a in actors:
                with contextlib.suppress(Exception):  # an actor of a dead node
                    ray.kill(a)

    def stop_pools(self) -> None:
        """Kill the pool actors and give their resources back to later stages."""
        for a in self._pools:
            with contextlib.suppress(Exception):
                self._ray.kill(a)
        self._pools.clear()
        self._reserved = dict.fromkeys(self._reserved, 0.0)

    def close(self) -> None:
        self.stop_pools()
        if self._started:
            self._ray.shutdown()
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None


#: a pool actor's concurrency group for ``whoami`` (see ``RayEngine.start_pool``)
RAY_CONTROL_GROUP = "control"


class _RayWorker:
    def __init__(self, build, config_json: str, setup: bool = False) -> None:
        """``setup``: call the worker's ``setup()`` now (a pool actor loads its models before
        it answers anything, ``whoami`` included)."""
        import ray

        self.worker = build(CurateConfig.model_validate_json(config_json))
        if setup and hasattr(self.worker, "setup"):
            self.worker.setup()
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def run(self, unit: Any) -> tuple[str, int, Any]:
        return self.node, self.pid, self.worker(unit)

    def whoami(self) -> int:
        """This actor's pid (a pool actor runs it in its ``control`` group: it answers while
        ``run`` hangs)."""
        return self.pid


def make_engine(config: CurateConfig) -> Engine:
    kind = config.engine.kind
    if kind == "sequential":
        return SequentialEngine(config)
    if kind == "process":
        return ProcessPoolEngine(config)
    if kind == "ray":
        return RayEngine(config)
    raise ValueError(f"engine.kind={kind!r} is not sequential, process or ray")
