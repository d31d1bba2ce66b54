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
- lost and hung actors have one contract on both engines: an actor (model server) that dies,
  or does not answer within ``model_pool.request_timeout_s``, is killed and replaced
  (``model_pool.max_restarts`` times per actor) and its unanswered requests are sent to the new
  one, each request to at most two actor processes (answers have no side effects); past that
  the run stops with :class:`ModelPoolUnavailable` naming the actor, its pid and the request,
  never rejecting a source, and running it again resumes. The process engine's model servers
  are replaced by the driver's supervisor (:mod:`mugv_data.model_servers`); a Ray actor by Ray
  itself (``ray.kill(no_restart=False)`` of a hung one, counted against Ray's
  ``max_restarts``; :class:`RayPoolConnections`).

The sequential engine runs the model stages inside its worker, as before.
Shape legend: N frames, H, W, 3 (RGB uint8).
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
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
        """A client of Ray pool actors (``engines._RayWorker`` around :class:`ModelWorker`,
        started by ``RayEngine.start_pool``) through :class:`RayPoolConnections`."""
        mp = config.engine.model_pool
        conns = RayPoolConnections(actors, mp.request_timeout_s, mp.max_restarts)
        return cls(
            range(len(conns.actors)),
            conns.submit,
            conns.result,
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


#: seconds to wait for a killed actor's calls to fail (the kill has landed) and for an
#: actor's pid from its control thread
RAY_KILL_WAIT_S = 60.0
RAY_WHOAMI_WAIT_S = 10.0
#: the least time a restarted actor gets to load its models and answer (``request_timeout_s``
#: when longer): a short request timeout must not fail a restart on a busy host
RAY_RESTART_MIN_WAIT_S = 60.0


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class RayPoolConnections:
    """A per-source worker's calls to the Ray pool actors: the transport of
    :meth:`ModelPoolClient.for_ray` (``submit`` / ``result``), with the contract of the process
    engine's :class:`~mugv_data.model_servers.ServerConnections`.

    The actors are declared with Ray's ``max_restarts`` (``model_pool.max_restarts``) and
    ``max_task_retries=0``: Ray restarts a lost actor but reruns nothing; this class resends.

    - ``timeout_s``: seconds to wait for an answer, counted from when the request was sent or
      that actor's previous answer to this worker came, whichever is later (None: no limit).
      An actor past it is taken as hung: its pid is read from its control thread (``whoami``
      in the ``control`` concurrency group answers while ``run`` hangs), it is killed with
      ``ray.kill(no_restart=False)`` (Ray restarts it, counted against ``max_restarts``) unless
      the call failed meanwhile (another worker killed it), and the call is sent again once the
      restarted actor answers ``whoami`` (its models loaded; it gets ``timeout_s``, at least
      :data:`RAY_RESTART_MIN_WAIT_S`);
    - a call that fails because its actor died (``RayActorError`` other than
      ``ActorDiedError``: Ray is restarting it) is sent again the same way, without a kill;
    - each request goes to at most two actor processes; an actor dead for good
      (``ActorDiedError``: no restart left, or its restart failed to load its models), a kill
      that does not land, or a request failing on its second process raises
      :class:`ModelPoolUnavailable` naming the actor, its pid and the request.

    Two workers whose timeouts for one hung actor expire in the same instant may each kill it
    (two restarts used); a worker whose call failed through another worker's kill only
    resends."""

    def __init__(self, actors: Sequence[Any], timeout_s: float | None, max_restarts: int) -> None:
        import ray

        self._ray = ray
        self.actors = list(actors)
        self.timeout_s = timeout_s
        self.max_restarts = max_restarts
        self._seq = 0
        #: (actor, seq) -> [request, times sent, when sent, ObjectRef]
        self._pending: dict[tuple[int, int], list[Any]] = {}
        self._last_answer: dict[int, float] = {}
        #: last pid seen per actor (its answers carry it)
        self.pids: list[int | None] = [None] * len(self.actors)
        #: hung actors this worker killed, per actor
        self.killed = [0] * len(self.actors)
        #: requests sent again (to a restarted actor)
        self.resent = 0
        #: one line per kill or resend: what happened and why
        self.events: list[str] = []

    def submit(self, i: int, request: Any) -> tuple[int, int]:
        """Send ``request`` to actor ``i``; the handle is ``(i, seq)``."""
        self._seq += 1
        handle = (i, self._seq)
        self._pending[handle] = [request, 0, 0.0, None]
        self._send(handle)
        return handle

    def _send(self, handle: tuple[int, int]) -> None:
        entry = self._pending[handle]
        entry[3] = self.actors[handle[0]].run.remote(entry[0])
        entry[1] += 1  # sent to one more actor process
        entry[2] = time.monotonic()

    def _whoami(self, i: int, timeout: float | None) -> int:
        from mugv_data.engines import RAY_CONTROL_GROUP

        ref = self.actors[i].whoami.options(concurrency_group=RAY_CONTROL_GROUP).remote()
        return self._ray.get(ref, timeout=timeout)

    def _unavailable(self, handle: tuple[int, int], why: str) -> ModelPoolUnavailable:
        from mugv_data.model_servers import describe_request

        i = handle[0]
        pid = self.pids[i] if self.pids[i] is not None else "?"
        req = describe_request(self._pending[handle][0])
        return ModelPoolUnavailable(
            f"engine.model_pool: model pool actor {i} is gone (pid {pid}, request {req}: "
            f"{why}); the run stopped, run the same command again to resume"
        )

    def _gone(self, e: BaseException) -> str:
        """Why Ray will not restart an actor (``ActorDiedError``)."""
        if "creation task" in _first_line(e):  # its (re)start failed to build its models
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            return f"it could not set up its models ({lines[-1]})"
        return f"no restart left (engine.model_pool.max_restarts={self.max_restarts})"

    def _note_pid(self, i: int, e: BaseException) -> None:
        """The pid Ray names in an actor error (the process that died), if any."""
        m = re.search(r"\bpid[:=] ?(\d+)", str(e))
        if m:
            self.pids[i] = int(m.group(1))

    def _recover(self, handle: tuple[int, int], why: str, hung: bool) -> bool:
        """Actor ``i`` hung (``hung``: kill it) or died while ``handle`` was out: send the
        request again to the restarted actor. False when the call finished meanwhile (its
        result is to be read again); raises :class:`ModelPoolUnavailable` when it cannot."""
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        ray, i = self._ray, handle[0]
        entry = self._pending[handle]
        actor = self.actors[i]
        if hung:
            # the hung process's pid, from its control thread (if that is stuck too, or the
            # actor already gone: the last pid seen)
            with contextlib.suppress(GetTimeoutError, RayActorError):
                self.pids[i] = self._whoami(i, RAY_WHOAMI_WAIT_S)
            if ray.wait([entry[3]], timeout=0)[0]:
                return False  # answered or failed meanwhile (killed by another worker)
            ray.kill(actor, no_restart=False)  # Ray restarts it (counted against max_restarts)
            self.killed[i] += 1
            self.events.append(f"engine.model_pool: actor {i} (pid {self.pids[i]}) {why}: killed")
            if not ray.wait([entry[3]], timeout=RAY_KILL_WAIT_S)[0]:  # the kill has landed
                raise self._unavailable(
                    handle, f"{why}; ray.kill did not stop it within {RAY_KILL_WAIT_S:g} s"
                )
        if entry[1] >= 2:
            raise self._unavailable(handle, f"{why}, on its second actor process")
        # the restarted actor, its models loaded: Ray queues a call while it restarts, or
        # answers "temporarily unavailable" (asked again until the wait is over)
        wait_s = None if self.timeout_s is None else max(self.timeout_s, RAY_RESTART_MIN_WAIT_S)
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                pid = self._whoami(i, left)
                break
            except ActorDiedError as e:
                raise self._unavailable(handle, f"{why}; {self._gone(e)}") from None
            except GetTimeoutError:
                raise self._unavailable(
                    handle, f"{why}; its restart did not answer within {wait_s:g} s"
                ) from None
            except RayActorError as e:  # restarting
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._unavailable(
                        handle, f"{why}; its restart is unavailable ({_first_line(e)})"
                    ) from None
                time.sleep(0.2)
        line = (
            f"engine.model_pool: actor {i} (pid {self.pids[i]}) {why}; request sent again to "
            f"pid {pid}"
        )
        self.pids[i] = pid
        self.events.append(line)
        warnings.warn(line, stacklevel=2)
        self._send(handle)
        self.resent += 1
        return True

    def result(self, handle: tuple[int, int]) -> Any:
        """The answer to a request (sent again to a restarted actor when its actor died or
        hung, see the class doc). An exception inside a stage propagates (``RayTaskError``)."""
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        if handle not in self._pending:
            raise KeyError(f"model pool actor {handle[0]}: no request {handle[1]} out")
        i = handle[0]
        entry = self._pending[handle]
        try:
            while True:
                timeout = None
                if self.timeout_s is not None:
                    since = max(entry[2], self._last_answer.get(i, 0.0))
                    timeout = max(0.0, since + self.timeout_s - time.monotonic())
                try:
                    _node, pid, value = self._ray.get(entry[3], timeout=timeout)
                except GetTimeoutError:
                    assert self.timeout_s is not None
                    self._recover(
                        handle, f"did not answer within {self.timeout_s:g} s (hung)", hung=True
                    )
                    continue
                except ActorDiedError as e:  # dead for good
                    self._note_pid(i, e)
                    raise self._unavailable(handle, f"died; {self._gone(e)}") from None
                except RayActorError as e:  # Ray is restarting it
                    self._note_pid(i, e)
                    self._recover(handle, f"died ({type(e).__name__})", hung=False)
                    continue
                self.pids[i] = pid
                self._last_answer[i] = time.monotonic()
                return value
        finally:
            self._pending.pop(handle, None)


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
