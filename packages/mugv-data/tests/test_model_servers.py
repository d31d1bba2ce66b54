"""The process engine's model servers (mugv_data.model_servers) with a stand-in worker: set up
once before they say ready, answers in order, a stage's error comes back to the caller and
leaves the connection usable, answers of given-up requests are skipped, a lost server raises
ModelPoolUnavailable, a setup failure names the error, and no server outlives its driver
(stopped, or SIGKILLed)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mugv_data.config import load_config
from mugv_data.model_pool import ModelPoolUnavailable
from mugv_data.model_servers import ModelServers, ServerAddresses, ServerConnections
from mugv_data_engine_workers import (
    build_answerer,
    build_answerer_failing_setup,
    build_gpu_reporter,
)
from mugv_data_procs import alive, wait_dead

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_servers_answer_in_order_and_a_lost_one_stops_its_callers():
    servers = ModelServers("t", build_answerer, load_config(None), [None, None])
    try:
        pids = servers.pids
        conns = ServerConnections(servers.addresses)
        assert {conns.result(conns.submit(i, "pid")) for i in (0, 1)} == set(pids)
        handles = [conns.submit(i % 2, i) for i in range(6)]  # several in flight on each
        assert [conns.result(h) for h in handles] == [2 * i for i in range(6)]
        with pytest.raises(RuntimeError, match=r"model server 0: ValueError: cannot score"):
            conns.result(conns.submit(0, "fail"))
        assert conns.result(conns.submit(0, 21)) == 42  # the connection is still usable
        conns.submit(1, 5)  # given up (as the client does after an error elsewhere)
        assert conns.result(conns.submit(1, 7)) == 14  # the stale answer is skipped
        os.kill(pids[1], signal.SIGKILL)
        assert wait_dead([pids[1]]) == []
        with pytest.raises(ModelPoolUnavailable, match="model server 1 is gone"):
            conns.result(conns.submit(1, 3))
        with pytest.raises(ModelPoolUnavailable, match="model server 1 is gone"):
            ServerConnections(servers.addresses).submit(1, 3)  # a new worker cannot connect
        assert conns.result(conns.submit(0, 4)) == 8  # the other one still answers
        # a stranger (wrong key) is refused, a peer gone mid-handshake is ignored: the server
        # still accepts its workers afterwards
        stranger = ServerConnections(ServerAddresses(servers.addresses.addresses, b"x" * 32))
        with pytest.raises(ModelPoolUnavailable, match="model server 0 is gone"):
            stranger.submit(0, 1)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(servers.addresses.addresses[0])
        late = ServerConnections(servers.addresses)
        assert late.result(late.submit(0, 5)) == 10
    finally:
        servers.stop()
    assert wait_dead(pids, 1.0) == []


def test_servers_are_pinned_to_the_drivers_visible_gpus(monkeypatch):
    """Two servers of 0.5 GPU each under a driver limited to GPUs 5 and 7: one on each (the
    k-th visible GPU's id, not k); more servers than the GPUs hold is refused."""
    from mugv_data.engines import ProcessPoolEngine, WorkerSpec
    from mugv_data.stages.base import Resources

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    spec = WorkerSpec("models", build_answerer, Resources(cpus=1, gpus=1.0))
    with ProcessPoolEngine(load_config(None)) as engine:
        with pytest.raises(ValueError, match="3 servers declare 3 GPU in all but 2 GPU"):
            engine.start_pool(spec, 3, max_restarts=0)
        conns = ServerConnections(engine.start_pool(spec, 2, max_restarts=0))
        assert [conns.result(conns.submit(i, "gpu")) for i in (0, 1)] == ["5", "7"]


def test_gpu_workers_of_a_map_take_their_gpu_from_the_managers_queue(monkeypatch):
    """Workers of 0.5 GPU each under a driver limited to GPUs 5 and 7: the map runs 2 per GPU,
    each pinned through the queue of the engine's manager (mugv_formats.lifecycle's
    start_manager), and every unit is answered by a pinned worker."""
    from mugv_data.engines import ProcessPoolEngine, WorkerSpec
    from mugv_data.stages.base import Resources

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    spec = WorkerSpec("gpu-stage", build_gpu_reporter, Resources(cpus=0.1, gpus=0.5))
    with ProcessPoolEngine(load_config(None)) as engine:
        answers = dict(engine.map(spec, range(40)))
    assert sorted(answers) == list(range(40))
    assert set(answers.values()) <= {"5", "7"} and None not in answers.values()


def test_a_server_that_cannot_set_up_names_the_error_and_leaves_no_process():
    children = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(RuntimeError, match=r"server 0 could not set up its models: OSError: no"):
        ModelServers("models", build_answerer_failing_setup, load_config(None), [None])
    assert {p.pid for p in multiprocessing.active_children()} <= children


DRIVER = textwrap.dedent(
    """
    import multiprocessing, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from mugv_data.config import load_config
    from mugv_data.model_servers import ModelServers
    import mugv_data_engine_workers as w
    build = getattr(w, sys.argv[2])
    if sys.argv[2] == "build_answerer":  # serving
        servers = ModelServers("models", build, load_config(None), [None, None])
        print(*servers.pids, flush=True)
    else:  # still loading their models
        threading.Thread(
            target=ModelServers, args=("models", build, load_config(None), [None, None]),
            daemon=True,
        ).start()
        while len(multiprocessing.active_children()) < 2:
            time.sleep(0.05)
        time.sleep(2.0)  # past die_with_parent, inside setup
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(300)
    """
)


@pytest.mark.parametrize("build", ["build_answerer", "build_answerer_slow_setup"])
def test_servers_die_with_a_sigkilled_driver(build):
    """Serving (their control pipe closes) or still loading models (die_with_parent)."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(Path(__file__).parent), build],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(v) for v in driver.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        driver.kill()
        driver.wait()
    assert wait_dead(pids, 15.0) == []
