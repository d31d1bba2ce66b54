"""Lost and hung model servers of the process engine are replaced (engine.model_pool
.max_restarts, .request_timeout_s) and their requests sent again.

Server level, with a stand-in worker: a server killed in the middle of a request, or one that
hangs, is killed and replaced and the requests it had are answered by the new one; several
workers seeing one lost server get one replacement; a request that kills its second server too,
and a server with no restart left, stop with an error naming the server, its pid and the
request. Curation level, with a tiny fake model (tests/mugv_data_engine_workers.FakeModels): a
server SIGKILLed mid-run, or hanging mid-run, leaves the run's clips exactly those of an
undisturbed run; with no restart left the run stops naming the server and a rerun resumes to
the same clips. The same contract for the Ray engine's pool actors (a hung actor killed with
ray.kill and restarted by Ray) on a local Ray (slow)."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from mugv_data.config import load_config
from mugv_data.model_pool import ModelPoolUnavailable
from mugv_data.model_servers import ModelServers, ServerConnections
from mugv_data_engine_workers import build_answerer_failing_setup, build_faulty_answerer
from mugv_data_procs import alive, wait_dead

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.filterwarnings("ignore:engine.model_pool:UserWarning"),
]


def _live_children() -> set[int]:
    """Pids of this process's live multiprocessing children (a test compares the set after
    its run with the set before: helpers started once per process by earlier tests, e.g.
    the checkpoint writer's queue manager, are not this test's leftovers)."""
    return {p.pid for p in multiprocessing.active_children() if p.is_alive()}


def test_a_killed_or_hung_server_is_replaced_and_its_requests_answered(tmp_path, monkeypatch):
    monkeypatch.setenv("MUGV_TEST_MODEL_FAULTS", str(tmp_path))
    servers = ModelServers("t", build_faulty_answerer, load_config(None), [None, None], 2)
    seen = list(servers.pids)
    try:
        conns = ServerConnections(servers.addresses, timeout_s=2.0)
        # killed (SIGKILL) in the middle of the second of three requests in flight
        (tmp_path / "die").touch()
        handles = [conns.submit(0, 5), conns.submit(0, ("die", "once")), conns.submit(0, 7)]
        assert [conns.result(h) for h in handles] == [10, "survived", 14]
        assert servers.restarts == [1, 0] and conns.replaced == [1, 0]
        assert wait_dead([seen[0]]) == [] and servers.pids[0] != seen[0]
        assert conns.result(conns.submit(0, "pid")) == servers.pids[0]
        seen.append(servers.pids[0])
        # hangs: no answer within the timeout -> killed, replaced, the request sent again
        (tmp_path / "hang").touch()
        t = time.monotonic()
        handles = [conns.submit(0, ("hang", "once")), conns.submit(0, 4)]
        assert [conns.result(h) for h in handles] == ["survived", 8]
        assert 2.0 <= time.monotonic() - t < 30
        assert servers.restarts == [2, 0] and wait_dead([seen[-1]]) == []
        assert "did not answer within 2 s (hung)" in servers.events[-1]
        assert conns.result(conns.submit(1, 21)) == 42  # the other server was left alone
        # no restart left: the error names the server, its pid and the request
        pid = servers.pids[0]
        with pytest.raises(ModelPoolUnavailable) as e:
            conns.result(conns.submit(0, ("die", "always")))
        msg = str(e.value)
        assert msg.startswith(f"engine.model_pool: model server 0 is gone (pid {pid}, request")
        assert "('die', 'always')" in msg and "died" in msg
        assert "no restart left (engine.model_pool.max_restarts=2)" in msg
        assert "run the same command again to resume" in msg
        with pytest.raises(ModelPoolUnavailable, match="model server 0 is gone.*no restart"):
            ServerConnections(servers.addresses).submit(0, 1)  # a later worker: the same
        assert servers.restarts == [2, 0] and wait_dead([pid]) == []
    finally:
        servers.stop()
    assert wait_dead(seen + servers_pids_or_empty(servers), 2.0) == []


def servers_pids_or_empty(servers: ModelServers) -> list[int]:
    return [p.pid for p in servers._procs if p is not None]


def test_workers_seeing_one_lost_server_get_one_replacement_and_a_poisoned_request_stops():
    children_before = _live_children()
    servers = ModelServers("t", build_faulty_answerer, load_config(None), [None], 5)
    try:
        a = ServerConnections(servers.addresses, timeout_s=30.0)
        b = ServerConnections(servers.addresses, timeout_s=30.0)
        assert a.result(a.submit(0, 1)) == b.result(b.submit(0, 2)) - 2 == 2
        old = servers.pids[0]
        os.kill(old, signal.SIGKILL)
        assert wait_dead([old]) == []
        assert (a.result(a.submit(0, 3)), b.result(b.submit(0, 4))) == (6, 8)
        assert servers.restarts == [1] and a.replaced == b.replaced == [1]
        # a request that kills its server every time: sent to two servers, then given up
        with pytest.raises(ModelPoolUnavailable) as e:
            a.result(a.submit(0, ("die", "always")))
        assert re.search(r"model server 0 is gone \(pid \d+, request \('die', 'always'\): "
                         r"died \(EOFError\), on its second server\)", str(e.value))  # fmt: skip
        assert servers.restarts == [2]
        assert b.result(b.submit(0, 5)) == 10  # the next request gets a new server
        assert servers.restarts == [3]
    finally:
        servers.stop()
    assert not _live_children() - children_before  # earlier tests' long-lived helpers excluded


# -- curation with a tiny fake model ----------------------------------------------------------


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory):
    from mugv_data.synth import scene, write_video

    d = tmp_path_factory.mktemp("restart_sources")
    for i in range(3):
        write_video(d / f"v{i}.mp4", scene(30, seed=11 + i) + scene(30, seed=21 + i))
    return d


def _curate(monkeypatch, sources: Path, out: Path, *extra: str, fault: str | None = None,
            fault_after: int = 1, saved: list | None = None,
            faults: Path | None = None) -> list[ModelServers]:  # fmt: skip
    """Curate ``sources`` on the process engine (1 worker, 1 model server running the fake
    model; ``extra`` overrides may choose Ray); with ``fault``, put the fault file once
    ``fault_after`` sources are staged, in ``faults`` (default: a folder beside ``out``, named
    to the servers by ``$MUGV_TEST_MODEL_FAULTS``; a local Ray's actors have the environment
    Ray was started with). Returns the run's model servers (process engine); ``saved`` gets
    the staged sources' results."""
    import mugv_data.curate as curate_mod
    from mugv_data.curate import curate
    from mugv_data.engines import ProcessPoolEngine
    from mugv_data.staging import Staging
    from mugv_data_engine_workers import build_fake_models

    if faults is None:
        faults = out.parent / f"{out.name}-faults"
        faults.mkdir(exist_ok=True)
        monkeypatch.setenv("MUGV_TEST_MODEL_FAULTS", str(faults))
    monkeypatch.setattr(curate_mod, "build_model_worker", build_fake_models)
    pools: list[ModelServers] = []
    start_pool, save = ProcessPoolEngine.start_pool, Staging.save

    def recording_start_pool(self, *a, **k):
        addresses = start_pool(self, *a, **k)
        pools.append(self.pools[-1])
        return addresses

    def save_then_fault(self, res):
        save(self, res)
        if saved is not None:
            saved.append(res)
        if fault is not None and len(list(self.sources.glob("*.json"))) == fault_after:
            (faults / fault).touch()

    monkeypatch.setattr(ProcessPoolEngine, "start_pool", recording_start_pool)
    monkeypatch.setattr(Staging, "save", save_then_fault)
    cfg = load_config(
        None,
        inputs=[str(sources)],
        output=str(out),
        overrides=[
            "filters.text.enabled=false",
            "filters.aesthetic.enabled=true",
            "filters.aesthetic.clip_path=/fake/clip",
            "filters.aesthetic.head_path=/fake/head.pth",
            "filters.aesthetic.min=4.3",
            "filters.aesthetic.device=cpu",
            "split.min_clip_s=1.0",
            "engine.kind=process",
            "engine.workers=1",
            "engine.max_in_flight=1",
            "engine.model_pool.actors=1",
            "engine.model_pool.batch_clips=1",
            "engine.model_pool.request_timeout_s=4",
            *extra,
        ],
    )
    try:
        curate(cfg, progress=False)
    finally:
        monkeypatch.undo()
    return pools


def _clips(out: Path):
    from mugv_data.curate import read_rejects
    from mugv_formats import ClipDataset

    recs = {r.key: (r.sha256, r.scores) for r in ClipDataset(out).records()}
    return recs, sorted((r["key"], r["stage"], r["reason"]) for r in read_rejects(out))


def assert_same_clips(got, ref) -> None:
    """The same clip keys and bytes, the same rejects and reasons, the same scores (1e-9:
    OpenCV's optical flow differs in the 12th digit between runs)."""
    (recs, rejects), (ref_recs, ref_rejects) = got, ref
    assert rejects == ref_rejects
    assert sorted(recs) == sorted(ref_recs)
    for k, (sha, scores) in ref_recs.items():
        assert recs[k][0] == sha, k
        assert recs[k][1] == pytest.approx(scores, rel=1e-9), k


@pytest.fixture(scope="module")
def undisturbed(fake_sources, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("undisturbed") / "out"
    (pool,) = _curate(mp, fake_sources, out)
    assert pool.restarts == [0]
    recs, rejects = _clips(out)
    assert recs and "aesthetic" in {stage for _, stage, _ in rejects}  # both outcomes
    assert all("aesthetic" in scores for _, scores in recs.values())
    return recs, rejects


@pytest.mark.parametrize("fault", ["die", pytest.param("hang", marks=pytest.mark.slow)])
def test_curation_survives_a_server_killed_or_hung_mid_run(
    fault, fake_sources, undisturbed, tmp_path, monkeypatch
):
    """kill -9 of the model server in the middle of a request, or a server that hangs (past
    request_timeout_s), after the first source is staged: the server is replaced, the request
    rerun, and the run's clips, scores and rejects are those of an undisturbed run."""
    t = time.monotonic()
    (pool,) = _curate(monkeypatch, fake_sources, tmp_path / "out", fault=fault)
    assert list((tmp_path / "out-faults").glob(f"{fault}.taken.*"))  # the fault happened
    assert pool.restarts == [1]
    # a killed server is seen either reading (EOF: "died") or, when the worker's next request
    # goes out before it reads, sending (BrokenPipeError: "refused the request")
    seen = ("died", "refused the request") if fault == "die" else ("did not answer within 4 s",)
    assert any(s in pool.events[0] for s in seen), pool.events[0]
    assert_same_clips(_clips(tmp_path / "out"), undisturbed)
    if fault == "hang":
        assert time.monotonic() - t >= 4.0


@pytest.mark.slow
def test_curation_with_no_restart_left_stops_naming_the_server_and_resumes(
    fake_sources, undisturbed, tmp_path, monkeypatch
):
    """max_restarts=0 and a server SIGKILLed mid-request after the first source is staged:
    the run stops with an error naming the server, its pid and the request, no process is
    left; the same command resumes (the staged source is not redone) to the clips of an
    undisturbed run."""
    children_before = _live_children()
    out = tmp_path / "out"
    first: list = []
    with pytest.raises(ModelPoolUnavailable) as e:
        _curate(monkeypatch, fake_sources, out, "engine.model_pool.max_restarts=0", fault="die",
                saved=first)  # fmt: skip
    msg = str(e.value)
    assert re.match(r"engine.model_pool: model server 0 is gone \(pid \d+, request 1 clip\(s\) "
                    r"[0-9a-f]+-\d+ of .*v\d\.mp4: died \((EOFError|ConnectionResetError: .*)\); "
                    r"no restart left "
                    r"\(engine.model_pool.max_restarts=0\)\)", msg), msg  # fmt: skip
    assert not _live_children() - children_before  # earlier tests' long-lived helpers excluded
    assert len(first) == 1 and first[0].reject_stage is None
    second: list = []
    (pool,) = _curate(monkeypatch, fake_sources, out, "engine.model_pool.max_restarts=0",
                      saved=second)  # fmt: skip
    assert pool.restarts == [0] and len(second) == 2
    assert {r.source for r in first} & {r.source for r in second} == set()
    assert_same_clips(_clips(out), undisturbed)


RESTARTING_DRIVER = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from mugv_data.config import load_config
from mugv_data.model_servers import ModelServers, ServerConnections
import mugv_data_engine_workers as w
servers = ModelServers("models", w.build_faulty_answerer, load_config(None), [None], 2)
conns = ServerConnections(servers.addresses, timeout_s=30.0)
first = servers.pids[0]
os.kill(first, signal.SIGKILL)
assert conns.result(conns.submit(0, 2)) == 4  # answered by a replacement
print(first, servers.pids[0], flush=True)
time.sleep(300)
"""


def test_a_replacement_server_dies_with_a_sigkilled_driver():
    """A replacement is started by the supervisor's thread; it still dies with the driver."""
    import subprocess

    driver = subprocess.Popen(
        [sys.executable, "-c", RESTARTING_DRIVER, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first, replacement = (int(v) for v in driver.stdout.readline().split())
        assert first != replacement and alive(replacement)
    finally:
        driver.kill()
        driver.wait()
    assert wait_dead([first, replacement], 15.0) == []


# -- the Ray engine's pool actors: the same contract ------------------------------------------


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray of 2 CPUs for this module's Ray tests (started once: ~10 s), whose workers
    import the tests' helper modules and see the fault folder this fixture yields (Ray's
    processes take the environment they are started with). RayEngine uses a running Ray and
    leaves it running."""
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants

    faults = tmp_path_factory.mktemp("ray_faults")
    mp = pytest.MonkeyPatch()
    here = str(Path(__file__).parent)
    mp.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    mp.setenv("MUGV_TEST_MODEL_FAULTS", str(faults))
    mp.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    mp.setattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", False)
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield faults
    finally:
        ray.shutdown()
        mp.undo()


def _clear_faults(faults: Path) -> Path:
    """The fault folder without an earlier test's faults (taken or not)."""
    for f in faults.iterdir():
        f.unlink()
    return faults


@pytest.mark.timeout(300)
def test_a_hung_or_killed_ray_pool_actor_is_restarted_and_its_requests_answered(local_ray):
    """RayEngine.start_pool (max_restarts=2) and a worker's RayPoolConnections (timeout 2 s):
    a call that hangs gets its actor killed (ray.kill) and restarted by Ray, and both the hung
    request and the one queued behind it are answered by the new process; an actor SIGKILLed
    mid-request is restarted and its request answered; with no restart left the error names
    the actor, its pid and the request."""
    from mugv_data.engines import RayEngine, WorkerSpec
    from mugv_data.model_pool import RayPoolConnections
    from mugv_data.stages.base import Resources

    faults = _clear_faults(local_ray)
    eng = RayEngine(load_config(None, overrides=["engine.kind=ray"]))
    try:
        spec = WorkerSpec("t", build_faulty_answerer, Resources(cpus=0.5))
        actors = eng.start_pool(spec, 2, max_restarts=2)
        conns = RayPoolConnections(actors, timeout_s=2.0, max_restarts=2)
        assert [conns.result(conns.submit(i, 5)) for i in (0, 1)] == [10, 10]
        first, other = conns.pids
        assert first != other and alive(first)
        # hangs: no answer within 2 s -> killed, restarted by Ray, both requests sent again
        (faults / "hang").touch()
        t = time.monotonic()
        handles = [conns.submit(0, ("hang", "once")), conns.submit(0, 4)]
        assert [conns.result(h) for h in handles] == ["survived", 8]
        assert 2.0 <= time.monotonic() - t < 60
        assert list(faults.glob(f"hang.taken.{first}"))  # the fault was the first process's
        assert conns.killed == [1, 0] and conns.resent == 2
        assert wait_dead([first]) == [] and conns.pids[0] not in (None, first)
        assert "did not answer within 2 s (hung)" in conns.events[0]
        # killed (SIGKILL) in the middle of a request: Ray restarts it, the request is resent
        second = conns.pids[0]
        (faults / "die").touch()
        assert conns.result(conns.submit(0, ("die", "once"))) == "survived"
        assert conns.killed == [1, 0] and conns.resent == 3 and wait_dead([second]) == []
        assert conns.result(conns.submit(1, 21)) == 42 and conns.pids[1] == other  # untouched
        # both restarts used: a hung request now stops with the actor, its pid, the request
        third = conns.pids[0]
        with pytest.raises(ModelPoolUnavailable) as e:
            conns.result(conns.submit(0, ("hang", "always")))
        assert str(e.value) == (
            f"engine.model_pool: model pool actor 0 is gone (pid {third}, request ('hang', "
            "'always'): did not answer within 2 s (hung); no restart left "
            "(engine.model_pool.max_restarts=2)); the run stopped, run the same command "
            "again to resume"
        )
        assert wait_dead([third]) == []
        with pytest.raises(ModelPoolUnavailable, match="actor 0 is gone.*no restart left"):
            late = RayPoolConnections(actors, 2.0, 2)  # a later worker: the same
            late.result(late.submit(0, 1))
        # an actor that cannot set up its models (loaded at start) names the error
        eng.stop_pools()
        spec = WorkerSpec("t", build_answerer_failing_setup, Resources(cpus=0.5))
        broken = RayPoolConnections(eng.start_pool(spec, 1, max_restarts=1), 2.0, 1)
        with pytest.raises(ModelPoolUnavailable) as e:
            broken.result(broken.submit(0, 1))
        assert re.fullmatch(
            r"engine.model_pool: model pool actor 0 is gone \(pid \d+, request 1: died; it "
            r"could not set up its models \(OSError: no weights at /nonexistent/model\)\); the "
            r"run stopped, run the same command again to resume",
            str(e.value),
        ), str(e.value)
    finally:
        eng.close()


RAY_POOL = [
    "engine.kind=ray",
    "engine.model_pool.cpus=0.5",  # beside the one per-source worker on a 2-CPU Ray
]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_curation_on_ray_survives_a_hung_pool_actor_and_with_no_restart_left_resumes(
    local_ray, fake_sources, undisturbed, tmp_path, monkeypatch
):
    """A Ray pool actor that hangs (past request_timeout_s=4) after the first source is
    staged: killed, restarted by Ray, the request sent again, and the run's clips, scores and
    rejects are an undisturbed run's. With max_restarts=0 the run stops with an error naming
    the actor, its pid and the request; the same command resumes (the staged source is not
    redone) to the undisturbed run's clips."""
    faults = _clear_faults(local_ray)
    t = time.monotonic()
    _curate(monkeypatch, fake_sources, tmp_path / "out", *RAY_POOL, fault="hang", faults=faults)
    (taken,) = faults.glob("hang.taken.*")  # the fault happened, in one actor process
    taken.unlink()
    assert time.monotonic() - t >= 4.0
    assert_same_clips(_clips(tmp_path / "out"), undisturbed)

    out = tmp_path / "stopped"
    first: list = []
    with pytest.raises(ModelPoolUnavailable) as e:
        _curate(monkeypatch, fake_sources, out, *RAY_POOL, "engine.model_pool.max_restarts=0",
                fault="hang", faults=faults, saved=first)  # fmt: skip
    (taken,) = faults.glob("hang.taken.*")
    hung_pid = int(taken.name.rsplit(".", 1)[1])
    taken.unlink()
    msg = str(e.value)
    assert re.fullmatch(rf"engine.model_pool: model pool actor 0 is gone \(pid {hung_pid}, "
                        r"request 1 clip\(s\) [0-9a-f]+-\d+ of .*v\d\.mp4: did not answer "
                        r"within 4 s \(hung\); no restart left "
                        r"\(engine.model_pool.max_restarts=0\)\); the run stopped, run the "
                        r"same command again to resume", msg), msg  # fmt: skip
    assert len(first) == 1 and first[0].reject_stage is None
    second: list = []
    _curate(monkeypatch, fake_sources, out, *RAY_POOL, "engine.model_pool.max_restarts=0",
            faults=faults, saved=second)  # fmt: skip
    assert len(second) == 2 and {r.source for r in first} & {r.source for r in second} == set()
    assert_same_clips(_clips(out), undisturbed)
