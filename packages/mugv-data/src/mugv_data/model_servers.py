"""Model-server processes: the model pool of the local process engine.

``ProcessPoolEngine.start_pool(spec, n)`` starts ``n`` server processes (``spawn``: a fresh
interpreter, so CUDA and the decoders start clean), each pinned to its GPU through
``CUDA_VISIBLE_DEVICES`` when the pool declares GPUs. A server builds ``spec.build(config)``
once (:class:`mugv_data.model_pool.ModelWorker`: the run's model stages, set up at start on
their configured device) and then answers requests from the per-source worker processes:

- each worker connects once to each server (a ``multiprocessing.connection`` over an abstract
  AF_UNIX socket, authenticated with a key made for this pool; messages travel in memory,
  nothing is read from disk);
- a request is ``(seq, payload)`` and its answer ``(seq, "ok" | "error", result)``; a server
  answers one connection's requests in order and runs one request at a time (its models are
  not shared between threads);
- :class:`ServerConnections` is the worker's side, the transport of
  :class:`mugv_data.model_pool.ModelPoolClient` (the Ray engine's client is the same class over
  actor handles); an exception inside a stage comes back as a ``RuntimeError`` naming the
  server, as the same exception in the worker's own models would.

Lost and hung servers (``engine.model_pool.request_timeout_s``, ``max_restarts``):

- a worker that finds a server's connection closed (the server died: killed, out of memory)
  or waits longer than ``request_timeout_s`` for an answer (a hung model) asks the driver's
  *supervisor* (a thread of :class:`ModelServers`, reached over its own socket) to replace
  that server, naming the pid it saw; the supervisor kills it (SIGKILL) and starts a new one on
  the same GPU, at most ``max_restarts`` times per server; several workers reporting the same
  pid get the one replacement;
- the worker then sends its requests that the old server had not answered to the new one: a
  request goes to at most two server processes (answers have no side effects, so a rerun
  request gives what the first would have given); the source's clips are staged once, as
  usual;
- when no restart is left, a replacement fails to load its models, or a request fails on its
  second server, :class:`~mugv_data.model_pool.ModelPoolUnavailable` names the server, its pid
  and the request and stops the run without rejecting a source; the same command resumes it
  (staged sources are not redone).

Servers call :func:`mugv_formats.lifecycle.die_with_parent` first: none outlives the driver.
The supervisor's one thread starts every replacement (the kernel's parent-death signal follows
the *thread* that started a process, so a short-lived thread would take its servers with it).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import secrets
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import Any

from mugv_formats.lifecycle import die_with_parent

from mugv_data.config import CurateConfig
from mugv_data.model_pool import ModelPoolUnavailable

#: seconds a stopping server gets to tear down before it is killed
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServerAddresses:
    """What a per-source worker needs to reach the servers (picklable; travels to spawned
    workers with their initializer's arguments)."""

    addresses: tuple[str, ...]
    authkey: bytes
    #: the servers' pids when the pool started (a worker names the one it saw die or hang)
    pids: tuple[int, ...] = ()
    #: the driver's supervisor, which replaces a lost or hung server (None: nothing does)
    supervisor: str | None = None

    def __len__(self) -> int:
        return len(self.addresses)


def _address() -> str | None:
    """An abstract AF_UNIX address on Linux (no socket file to leave behind); elsewhere the
    default, a file in a temporary folder."""
    if sys.platform.startswith("linux"):
        return f"\0mugv-model-server-{os.getpid()}-{secrets.token_hex(8)}"
    return None


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _serve(build, config_json: str, gpu: str | None, parent_pid: int, authkey: bytes, ctl) -> None:
    """A server process: build the worker, report ``ready`` (or the error) on ``ctl``, serve
    connections until ``ctl`` says ``stop`` or closes, then tear down."""
    die_with_parent(parent_pid)  # a SIGKILLed driver leaves no server behind
    if gpu is not None:  # before anything imports torch in this fresh (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        worker = build(CurateConfig.model_validate_json(config_json))
        setup = getattr(worker, "setup", None)
        if setup is not None:
            setup()  # the models load now, once, not on the first request
        listener = Listener(_address(), family="AF_UNIX", authkey=authkey)
    except BaseException as e:
        ctl.send(("error", _error_text(e)))
        return
    models = threading.Lock()
    stopping = threading.Event()

    def handle(conn: Connection) -> None:
        with conn:
            while True:
                try:
                    seq, payload = conn.recv()
                except Exception:  # EOF: the worker is done (or gone); closing tells it
                    return
                try:
                    with models:
                        answer = (seq, "ok", worker(payload))
                except Exception as e:  # a stage failed: the worker decides (as in-process)
                    answer = (seq, "error", _error_text(e))
                try:
                    conn.send(answer)
                except OSError:
                    return

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()
            except Exception:
                if stopping.is_set():
                    return  # the listener was closed
                time.sleep(0.01)  # a failed handshake (not one of ours, or a peer gone)
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True, name="model-server-accept").start()
    ctl.send(("ready", listener.address))
    with contextlib.suppress(EOFError, OSError):
        ctl.recv()  # "stop", or EOF when the driver closes its end
    stopping.set()
    listener.close()
    with models:  # no request is half done
        td = getattr(worker, "teardown", None)
        if td is not None:
            td()


def describe_request(request: Any) -> str:
    """A request, for error messages: a model-pool request ``(source, packed clips)`` by its
    source and clip keys; anything else by its (shortened) repr."""
    if (
        isinstance(request, tuple)
        and len(request) == 2
        and isinstance(request[1], list)
        and request[1]
        and all(isinstance(d, dict) and "key" in d for d in request[1])
    ):
        keys = [d["key"] for d in request[1]]
        span = keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]}"
        return f"{len(keys)} clip(s) {span} of {request[0]}"
    text = repr(request)
    return text if len(text) <= 80 else text[:77] + "..."


class ModelServers:
    """The driver's handle on a pool of server processes (started ready, or not at all), and
    the supervisor that replaces a lost or hung one (at most ``max_restarts`` times each)."""

    def __init__(
        self,
        name: str,
        build,
        config: CurateConfig,
        gpus: list[str | None],
        max_restarts: int = 0,
    ) -> None:
        """One server per entry of ``gpus`` (its ``CUDA_VISIBLE_DEVICES``, or None). Returns
        once every server has set up its models; raises :class:`ModelPoolUnavailable` naming
        the error (and stops the others) when one fails to."""
        self.name = name
        self.max_restarts = max_restarts
        self._build, self._gpus = build, list(gpus)
        self._ctx = mp.get_context("spawn")
        self._authkey = secrets.token_bytes(32)
        self._config_json = config.model_dump_json()
        self._procs: list[Any] = []
        self._ctls: list[Connection] = []
        self._addresses: list[str] = []
        #: restarts used, per server
        self.restarts = [0] * len(gpus)
        #: one line per replacement: what was replaced and why
        self.events: list[str] = []
        self._gone: dict[int, str] = {}  # server -> why it is not replaced any more
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: Listener | None = None
        self._thread = threading.Thread(
            target=self._supervise, daemon=True, name=f"{name}-supervisor"
        )
        try:
            for i in range(len(gpus)):
                self._procs.append(None)
                self._ctls.append(None)  # type: ignore[arg-type]
                self._spawn(i)
            self._addresses = [self._wait_ready(i) for i in range(len(self._procs))]
            self._supervisor = Listener(_address(), family="AF_UNIX", authkey=self._authkey)
        except BaseException:
            self.stop()
            raise
        self._thread.start()

    def _spawn(self, i: int) -> None:
        mine, theirs = self._ctx.Pipe()
        p = self._ctx.Process(
            target=_serve,
            args=(self._build, self._config_json, self._gpus[i], os.getpid(), self._authkey, theirs),
            name=f"{self.name}-server-{i}",
            daemon=True,
        )
        p.start()
        theirs.close()
        self._procs[i], self._ctls[i] = p, mine

    def _wait_ready(self, i: int) -> str:
        ctl, p = self._ctls[i], self._procs[i]
        wait([ctl, p.sentinel])
        try:
            kind, value = ctl.recv()
        except (EOFError, OSError):
            p.join(5)
            raise ModelPoolUnavailable(
                f"engine.model_pool: {self.name} server {i} died while setting up its models "
                f"(exit code {p.exitcode})"
            ) from None
        if kind != "ready":
            raise ModelPoolUnavailable(
                f"engine.model_pool: {self.name} server {i} could not set up its models: {value}"
            )
        return value

    @property
    def addresses(self) -> ServerAddresses:
        assert self._supervisor is not None
        return ServerAddresses(
            tuple(self._addresses), self._authkey, tuple(self.pids), self._supervisor.address
        )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def alive(self) -> list[bool]:
        return [p.is_alive() for p in self._procs]

    # -- the supervisor (one thread: it starts every replacement, see the module's docstring)

    def _supervise(self) -> None:
        listener = self._supervisor
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn = listener.accept()
            except Exception:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)  # a failed handshake
                continue
            with conn:
                try:
                    if not conn.poll(10.0):
                        continue
                    _, i, pid, why = conn.recv()
                    conn.send(self.replace(i, pid, why))
                except (EOFError, OSError, ValueError, TypeError):
                    continue  # the worker went away, or not one of ours

    def replace(self, i: int, pid: int, why: str) -> tuple[str, Any, Any]:
        """Replace server ``i`` if it still is process ``pid`` (a worker saw it die or hang:
        ``why``): ``("ok", address, pid)`` of the server now serving, or ``("gone", why,
        None)`` when it is not replaced (no restart left, its replacement failed, the pool is
        stopping)."""
        with self._lock:
            if self._stopping.is_set():
                return ("gone", "the model pool is stopping", None)
            if i in self._gone:
                return ("gone", self._gone[i], None)
            p = self._procs[i]
            if p.pid != pid and p.is_alive():  # already replaced for another worker
                return ("ok", self._addresses[i], p.pid)
            if p.is_alive():
                p.kill()
            p.join()
            with contextlib.suppress(OSError):
                self._ctls[i].close()
            if self.restarts[i] >= self.max_restarts:
                self._gone[i] = (
                    f"no restart left (engine.model_pool.max_restarts={self.max_restarts})"
                )
                return ("gone", self._gone[i], None)
            self.restarts[i] += 1
            n = f"{self.restarts[i]} of {self.max_restarts}"
            try:
                self._spawn(i)
                self._addresses[i] = self._wait_ready(i)
            except ModelPoolUnavailable as e:
                self._gone[i] = f"its replacement ({n}) failed: {e}"
                return ("gone", self._gone[i], None)
            line = (
                f"engine.model_pool: {self.name} server {i} (pid {pid}) {why}; replaced by "
                f"pid {self._procs[i].pid} (restart {n})"
            )
            self.events.append(line)
            warnings.warn(line, stacklevel=1)
            return ("ok", self._addresses[i], self._procs[i].pid)

    def stop(self) -> None:
        """Ask every server to stop (each tears its models down), kill one that does not;
        then stop the supervisor."""
        with self._lock:  # a replacement under way finishes first; none starts after
            self._stopping.set()
        for ctl in self._ctls:
            if ctl is not None:
                with contextlib.suppress(OSError):
                    ctl.send("stop")
        for p in self._procs:
            if p is None:
                continue
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join()
        for ctl in self._ctls:
            if ctl is not None:
                ctl.close()
        self._procs, self._ctls = [], []
        # only now: the replacements' parent-death signal follows the supervisor's thread
        if self._supervisor is not None:  # wake its accept (a handshake cut short), close
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self._supervisor.address)
            self._supervisor.close()
            self._supervisor = None
            if self._thread.is_alive():
                self._thread.join(5.0)


class ServerConnections:
    """A per-source worker's connections to the servers: the transport of
    :meth:`mugv_data.model_pool.ModelPoolClient.for_servers` (``submit`` / ``result``).

    ``timeout_s``: seconds to wait for an answer, counted from when the request was sent or
    the server's previous answer on this connection came, whichever is later (None: no limit).
    A server that does not answer in time, or whose connection closes, is replaced through the
    driver's supervisor and the requests it still had are sent again (each request to at most
    two server processes)."""

    def __init__(self, servers: ServerAddresses, timeout_s: float | None = None) -> None:
        self.servers = servers
        self.timeout_s = timeout_s
        self._addresses = list(servers.addresses)
        self._pids = list(servers.pids)
        self._conns: dict[int, Connection] = {}
        self._seq = 0
        #: per server: seq -> [request, times sent, when sent], in the order sent
        self._pending: dict[int, dict[int, list[Any]]] = {}
        self._last_answer: dict[int, float] = {}
        #: servers this worker had replaced (by position)
        self.replaced = [0] * len(servers)

    def _close(self, i: int) -> None:
        conn = self._conns.pop(i, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def _unavailable(self, i: int, why: str, seq: int | None = None) -> ModelPoolUnavailable:
        self._close(i)
        req = ""
        if seq is not None and seq in self._pending.get(i, {}):
            req = f", request {describe_request(self._pending[i][seq][0])}"
        pid = self._pids[i] if i < len(self._pids) else "?"
        return ModelPoolUnavailable(
            f"engine.model_pool: model server {i} is gone (pid {pid}{req}: {why}); the run "
            "stopped, run the same command again to resume"
        )

    def _connect(self, i: int) -> Connection:
        if i not in self._conns:
            self._conns[i] = Client(
                self._addresses[i], family="AF_UNIX", authkey=self.servers.authkey
            )
            self._last_answer[i] = time.monotonic()
        return self._conns[i]

    def _send(self, i: int, seq: int) -> None:
        entry = self._pending[i][seq]
        self._connect(i).send((seq, entry[0]))
        entry[1] += 1  # sent to one more server process
        entry[2] = time.monotonic()

    def _recover(self, i: int, why: str, seq: int) -> None:
        """Server ``i`` died or hung while ``seq`` was out: have it replaced, send its
        unanswered requests again; raises :class:`ModelPoolUnavailable` when that cannot be.
        (A replacement that is gone before it takes the requests is reported in turn: the
        supervisor's restarts bound the loop.)"""
        self._close(i)
        pending = self._pending.setdefault(i, {})
        for s in [s for s in pending if s < seq]:  # given up by the client (after an error)
            del pending[s]
        while True:
            for s, entry in pending.items():
                if entry[1] >= 2:  # sent to two server processes already: give it up
                    raise self._unavailable(i, f"{why}, on its second server", s)
            if self.servers.supervisor is None:
                raise self._unavailable(i, why, seq)
            try:
                with Client(
                    self.servers.supervisor, family="AF_UNIX", authkey=self.servers.authkey
                ) as sup:
                    sup.send(("replace", i, self._pids[i], why))
                    kind, value, pid = sup.recv()
            except (OSError, EOFError, mp.AuthenticationError) as e:
                raise self._unavailable(
                    i, f"{why}; the driver's supervisor: {_error_text(e)}", seq
                ) from e
            if kind != "ok":
                raise self._unavailable(i, f"{why}; {value}", seq)
            self._addresses[i], self._pids[i] = value, pid
            self.replaced[i] += 1
            try:
                for s in list(pending):
                    self._send(i, s)
                return
            except (OSError, EOFError, mp.AuthenticationError) as e:
                self._close(i)
                why = f"{why}; then its replacement too ({_error_text(e)})"

    def submit(self, i: int, request: Any) -> tuple[int, int]:
        """Send ``request`` to server ``i``; the handle is ``(i, seq)``."""
        self._seq += 1
        seq = self._seq
        self._pending.setdefault(i, {})[seq] = [request, 0, 0.0]
        try:
            self._send(i, seq)
        except (OSError, EOFError, mp.AuthenticationError) as e:
            self._recover(i, f"refused the request ({_error_text(e)})", seq)
        return i, seq

    def result(self, handle: tuple[int, int]) -> Any:
        """The answer to a request. A server answers in order and the client waits for its
        requests in the order it sent them, so an older answer still on the connection is one
        of a request given up after an error: it is dropped."""
        i, seq = handle
        pending = self._pending.get(i, {})
        if seq not in pending:
            raise KeyError(f"model server {i}: no request {seq} out")
        while True:
            if i not in self._conns:
                raise self._unavailable(i, "closed after an earlier error", seq)
            conn = self._conns[i]
            try:
                if self.timeout_s is not None:
                    since = max(pending[seq][2], self._last_answer.get(i, 0.0))
                    left = since + self.timeout_s - time.monotonic()
                    if not conn.poll(max(0.0, left)):
                        self._recover(
                            i, f"did not answer within {self.timeout_s:g} s (hung)", seq
                        )
                        continue
                got, kind, value = conn.recv()
            except (OSError, EOFError) as e:
                self._recover(i, f"died ({_error_text(e)})", seq)
                continue
            self._last_answer[i] = time.monotonic()
            pending.pop(got, None)
            if got == seq:
                break
            if got > seq:
                raise AssertionError(f"model server {i} answered request {got} before {seq}")
        if kind == "error":
            raise RuntimeError(f"model server {i}: {value}")
        return value

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.close()
        self._conns.clear()
