"""A pool of model actors for the model stages (aesthetic, classifier, clip_embedding).

With ``engine.kind: ray`` or ``process`` and ``engine.model_pool.actors > 0``, per-source
workers run the CPU stages only (probe, decode, split, CPU filters, encode; they declare no GPU
and load no model) and hand each source's candidate clips to a pool that holds the models: Ray
actors, or model-server processes (:mod:`mugv_data.model_servers`) on the process engine, each
declaring ``model_pool.gpus`` GPUs (when a model stage runs on CUDA) and ``model_pool.cpus``.
One client (:class:`ModelPoolClient`) serves both transports:

- a request is a batch of at most ``model_pool.batch_clips`` clips of one source, carrying only
  the frames the model stages read (each stage's ``evenly(num_frames)`` frames of a clip, at
  the analysis size) and the clip's scores and verdict so far;
- a worker keeps at most ``model_pool.max_in_flight`` requests in flight (it waits for its
  oldest before sending another) and sends each to the actor with the fewest of its requests
  outstanding, so the pool's queue never exceeds workers x max_in_flight batches
  (backpressure);
- the actor runs the same stage classes (``process``, batched by each stage's ``batch_size``)
  on the same frames, so scores and verdicts are those of the in-process path, and the first
  rejection still wins (the model stages come after every CPU stage in both paths);
- a lost actor is restarted by Ray (``model_pool.max_restarts``) and its requests rerun (they
  have no side effects); a pool that stays unreachable stops the run
  (:class:`ModelPoolUnavailable`), never rejecting sources. A model server of the process
  engine that dies or does not answer within ``model_pool.request_timeout_s`` is killed and
  replaced (``model_pool.max_restarts`` times per server) and its unanswered requests are sent
  to the new one (:mod:`mugv_data.model_servers`); past that the run stops, and running it
  again resumes.

The sequential engine runs the model stages inside its worker, as before.
Shape legend: N frames, H, W, 3 (RGB uint8).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mugv_data.config import CurateConfig
from mugv_data.stages.base import Clip, ClipFrames, ClipStage, Resources

#: Stages that load a model and may run on a GPU: the ones the pool takes over.
MODEL_STAGES = frozenset({"aesthetic", "classifier", "clip_embedding"})


class ModelPoolUnavailable(RuntimeError):
    """The model pool cannot be reached (its actors are gone): stops the run, rejects nothing."""


def is_model_stage(stage: ClipStage) -> bool:
    return stage.name in MODEL_STAGES


def frame_indices(clip: Clip, stages: Sequence[ClipStage]) -> list[int]:
    """Clip-relative frames the model stages read (each reads ``evenly(num_frames)``)."""
    idx: set[int] = set()
    for s in stages:
        idx.update(clip.frames.evenly(s.config.num_frames))
    return sorted(idx)


def pack_clip(clip: Clip, stages: Sequence[ClipStage]) -> dict[str, Any]:
    """What a model actor needs of one clip: its identity, the frames the stages read
    (``frames`` uint8 [N, H, W, 3] at ``indices``) and its scores and verdict so far."""
    idx = frame_indices(clip, stages)
    return {
        "key": clip.key,
        "source": clip.source,
        "index": clip.index,
        "span": (clip.start_frame, clip.end_frame, clip.start_s, clip.end_s, clip.fps),
        "num_frames": clip.frames.num_frames,
        "indices": idx,
        "frames": clip.frames.get(idx),
        "scores": dict(clip.scores),
        "verdict": (clip.rejected_stage, clip.reason),
    }


def unpack_clip(d: dict[str, Any]) -> Clip:
    """A :class:`Clip` whose frames are only the packed ones (reading another is an error)."""
    pos = {i: j for j, i in enumerate(d["indices"])}
    frames_NHW3 = d["frames"]

    def get(idx: Sequence[int]) -> np.ndarray:
        missing = [i for i in idx if i not in pos]
        if missing:
            raise KeyError(
                f"model pool: frames {missing} of clip {d['key']} were not sent "
                f"(sent {d['indices']})"
            )
        return frames_NHW3[[pos[i] for i in idx]]

    a, b, start_s, end_s, fps = d["span"]
    c = Clip(
        key=d["key"],
        source=d["source"],
        index=d["index"],
        start_frame=a,
        end_frame=b,
        start_s=start_s,
        end_s=end_s,
        fps=fps,
        frames=ClipFrames(d["num_frames"], fps, get),
        scores=dict(d["scores"]),
    )
    c.rejected_stage, c.reason = d["verdict"]
    return c


def run_model_stages(stages: Sequence[ClipStage], packed: list[dict[str, Any]]) -> list[dict]:
    """Run the model stages over packed clips (in an actor): each clip's scores, verdict and
    ``clip_embedding`` (when a stage set one)."""
    clips = [unpack_clip(d) for d in packed]
    for s in stages:
        s.setup()
        s.process(clips)
    out = []
    for c in clips:
        emb = c.extra.get("clip_embedding")
        out.append(
            {
                "key": c.key,
                "scores": c.scores,
                "verdict": (c.rejected_stage, c.reason),
                "clip_embedding": None if emb is None else np.asarray(emb, np.float32),
            }
        )
    return out


def apply_results(clips: Sequence[Clip], results: list[dict]) -> None:
    for c, r in zip(clips, results, strict=True):
        if r["key"] != c.key:
            raise RuntimeError(f"model pool answered for clip {r['key']}, expected {c.key}")
        c.scores.update(r["scores"])
        c.rejected_stage, c.reason = r["verdict"]
        if r["clip_embedding"] is not None:
            c.extra["clip_embedding"] = r["clip_embedding"]


class ModelWorker:
    """The body of one pool actor: the run's model stages, set up once, per-source settings
    (``filters.per_source``) applied per request."""

    def __init__(self, config: CurateConfig) -> None:
        from mugv_data.per_source import SourceProcessor

        self.proc = SourceProcessor(config, encode=False)  # models load on first use

    def setup(self) -> None:
        """Load the run's model stages now (a model server does, before it says ready)."""
        for s in self.proc.stages:
            if is_model_stage(s):
                s.setup()

    def __call__(self, request: tuple[str, list[dict[str, Any]]]) -> list[dict]:
        source, packed = request
        stages = [s for s in self.proc.stages_for(source) if is_model_stage(s)]
        return run_model_stages(stages, packed)

    def teardown(self) -> None:
        self.proc.teardown()


def build_model_worker(config: CurateConfig) -> ModelWorker:
    return ModelWorker(config)


def model_stages_enabled(config: CurateConfig) -> list[ClipStage]:
    from mugv_data.per_source import build_clip_stages

    return [s for s in build_clip_stages(config) if is_model_stage(s)]


def model_pool_resources(config: CurateConfig) -> Resources:
    """One pool actor: ``model_pool.cpus``, ``model_pool.gpus`` when a model stage runs on
    CUDA (else none), ``model_pool.memory_mb``."""
    mp = config.engine.model_pool
    gpu = any(s.resources.gpus > 0 for s in model_stages_enabled(config))
    return Resources(cpus=mp.cpus, gpus=mp.gpus if gpu else 0.0, memory_mb=mp.memory_mb)


class ModelPoolClient:
    """Sends a source's clips to the pool actors with bounded requests in flight.

    ``submit(actor, request)`` returns a handle, ``result(handle)`` the actor's answer (Ray:
    ``actor.run.remote`` and ``ray.get``; model servers: :class:`ServerConnections
    <mugv_data.model_servers.ServerConnections>`; tests pass in-process stand-ins)."""

    def __init__(
        self,
        actors: Sequence[Any],
        submit: Callable[[Any, Any], Any],
        result: Callable[[Any], list[dict]],
        *,
        batch_clips: int,
        max_in_flight: int,
    ) -> None:
        if not actors:
            raise ValueError("a model pool needs at least one actor")
        self.actors = list(actors)
        self._submit, self._result = submit, result
        self.batch_clips, self.max_in_flight = batch_clips, max_in_flight
        self.outstanding = dict.fromkeys(range(len(self.actors)), 0)
        self.peak_in_flight = 0
        self.requests = 0
        #: requests sent to each actor (by position)
        self.requests_per_actor = [0] * len(self.actors)

    def process(self, source: str, clips: Sequence[Clip], stages: Sequence[ClipStage]) -> None:
        todo = [c for c in clips if c.frames is not None]
        inflight: deque[tuple[Any, int, list[Clip]]] = deque()

        def finish_oldest() -> None:
            handle, a, chunk = inflight.popleft()
            try:
                answer = self._result(handle)
            finally:
                self.outstanding[a] -= 1
            apply_results(chunk, answer)

        try:
            for i in range(0, len(todo), self.batch_clips):
                while len(inflight) >= self.max_in_flight:
                    finish_oldest()
                chunk = todo[i : i + self.batch_clips]
                request = (source, [pack_clip(c, stages) for c in chunk])
                a = min(self.outstanding, key=self.outstanding.__getitem__)
                inflight.append((self._submit(self.actors[a], request), a, chunk))
                self.outstanding[a] += 1
                self.requests += 1
                self.requests_per_actor[a] += 1
                self.peak_in_flight = max(self.peak_in_flight, len(inflight))
            while inflight:
                finish_oldest()
        finally:
            for _handle, a, _chunk in inflight:  # an error: forget what is still out
                self.outstanding[a] -= 1

    @classmethod
    def for_ray(cls, actors: Sequence[Any], config: CurateConfig) -> ModelPoolClient:
        """A client of Ray pool actors (``engines._RayWorker`` around :class:`ModelWorker`)."""
        import ray
        from ray.exceptions import RayActorError

        def result(ref):
            try:
                return ray.get(ref)[1]
            except RayActorError as e:
                raise ModelPoolUnavailable(
                    f"engine.model_pool: an actor is gone after its restarts ({type(e).__name__})"
                ) from e

        mp = config.engine.model_pool
        return cls(
            actors,
            lambda actor, request: actor.run.remote(request),
            result,
            batch_clips=mp.batch_clips,
            max_in_flight=mp.max_in_flight,
        )

    @classmethod
    def for_servers(cls, servers: Any, config: CurateConfig) -> ModelPoolClient:
        """A client of the process engine's model servers (``servers``: their
        :class:`~mugv_data.model_servers.ServerAddresses`)."""
        from mugv_data.model_servers import ServerConnections

        mp = config.engine.model_pool
        conns = ServerConnections(servers, timeout_s=mp.request_timeout_s)
        return cls(
            range(len(servers)),
            conns.submit,
            conns.result,
            batch_clips=mp.batch_clips,
            max_in_flight=mp.max_in_flight,
        )


def build_pooled_source_worker(config: CurateConfig, actors: Any, encode: bool = True):
    """A per-source worker that sends its model stages to the pool (``functools.partial``
    binds what ``start_pool`` returned: Ray actor handles, or the model servers'
    addresses; engines call it with the config; ``encode=False`` writes no clips)."""
    from mugv_data.model_servers import ServerAddresses
    from mugv_data.per_source import SourceProcessor

    if isinstance(actors, ServerAddresses):
        client = ModelPoolClient.for_servers(actors, config)
    else:
        client = ModelPoolClient.for_ray(actors, config)
    proc = SourceProcessor(config, encode=encode, model_pool=client)
    proc.setup()
    return proc
