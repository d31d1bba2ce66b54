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
  actor handles): a closed connection, a refused one or a missing server raises
  :class:`~mugv_data.model_pool.ModelPoolUnavailable`, which stops the run without rejecting a
  source; an exception inside a stage comes back as a ``RuntimeError`` naming the server, as the
  same exception in the worker's own models would.

Servers call :func:`mugv_formats.lifecycle.die_with_parent` first: none outlives the driver.
There is no restart (``model_pool.max_restarts`` is Ray's): a lost server stops the run and a
second run resumes it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import secrets
import sys
import threading
import time
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

    def __len__(self) -> int:
        return len(self.addresses)


def _address() -> str | None:
    """An abstract AF_UNIX address on Linux (no socket file to leave behind); elsewhere the
    default, a file in a temporary folder."""
    if sys.platform.startswith("linux"):
        return f"\0mugv-model-server-{os.getpid()}-{secrets.token_hex(8)}"
    return None


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


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


class ModelServers:
    """The driver's handle on a pool of server processes (started ready, or not at all)."""

    def __init__(
        self, name: str, build, config: CurateConfig, gpus: list[str | None]
    ) -> None:
        """One server per entry of ``gpus`` (its ``CUDA_VISIBLE_DEVICES``, or None). Returns
        once every server has set up its models; raises :class:`ModelPoolUnavailable` naming
        the error (and stops the others) when one fails to."""
        self.name = name
        ctx = mp.get_context("spawn")
        authkey = secrets.token_bytes(32)
        config_json = config.model_dump_json()
        self._procs: list[Any] = []
        self._ctls: list[Connection] = []
        try:
            for gpu in gpus:
                mine, theirs = ctx.Pipe()
                p = ctx.Process(
                    target=_serve,
                    args=(build, config_json, gpu, os.getpid(), authkey, theirs),
                    name=f"{name}-server-{len(self._procs)}",
                    daemon=True,
                )
                p.start()
                theirs.close()
                self._procs.append(p)
                self._ctls.append(mine)
            addresses = [self._wait_ready(i) for i in range(len(self._procs))]
        except BaseException:
            self.stop()
            raise
        self.addresses = ServerAddresses(tuple(addresses), authkey)

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
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def alive(self) -> list[bool]:
        return [p.is_alive() for p in self._procs]

    def stop(self) -> None:
        """Ask every server to stop (each tears its models down), kill one that does not."""
        for ctl in self._ctls:
            with contextlib.suppress(OSError):
                ctl.send("stop")
        for p in self._procs:
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join()
        for ctl in self._ctls:
            ctl.close()
        self._procs, self._ctls = [], []


class ServerConnections:
    """A per-source worker's connections to the servers: the transport of
    :meth:`mugv_data.model_pool.ModelPoolClient.for_servers` (``submit`` / ``result``)."""

    def __init__(self, servers: ServerAddresses) -> None:
        self.servers = servers
        self._conns: dict[int, Connection] = {}
        self._seq = 0

    def _unavailable(self, i: int, e: BaseException) -> ModelPoolUnavailable:
        conn = self._conns.pop(i, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
        return ModelPoolUnavailable(
            f"engine.model_pool: model server {i} is gone ({_error_text(e)}); the run stopped, "
            "run the same command again to resume"
        )

    def _conn(self, i: int) -> Connection:
        if i not in self._conns:
            try:
                self._conns[i] = Client(
                    self.servers.addresses[i], family="AF_UNIX", authkey=self.servers.authkey
                )
            except (OSError, EOFError, mp.AuthenticationError) as e:
                raise self._unavailable(i, e) from e
        return self._conns[i]

    def submit(self, i: int, request: Any) -> tuple[int, int]:
        """Send ``request`` to server ``i``; the handle is ``(i, seq)``."""
        self._seq += 1
        try:
            self._conn(i).send((self._seq, request))
        except (OSError, EOFError) as e:
            raise self._unavailable(i, e) from e
        return i, self._seq

    def result(self, handle: tuple[int, int]) -> Any:
        """The answer to a request. A server answers in order and the client waits for its
        requests in the order it sent them, so an older answer still on the connection is one
        of a request given up after an error: it is dropped."""
        i, seq = handle
        while True:
            if i not in self._conns:
                raise self._unavailable(i, EOFError("closed after an earlier error"))
            try:
                got, kind, value = self._conns[i].recv()
            except (OSError, EOFError) as e:
                raise self._unavailable(i, e) from e
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
