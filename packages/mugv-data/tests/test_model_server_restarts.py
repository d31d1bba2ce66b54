"""Lost and hung model servers of the process engine are replaced (engine.model_pool
.max_restarts, .request_timeout_s) and their requests sent again.

Server level, with a stand-in worker: a server killed in the middle of a request, or one that
hangs, is killed and replaced and the requests it had are answered by the new one; several
workers seeing one lost server get one replacement; a request that kills its second server too,
and a server with no restart left, stop with an error naming the server, its pid and the
request. Curation level, with a tiny fake model (tests/mugv_data_engine_workers.FakeModels): a
server SIGKILLed mid-run, or hanging mid-run, leaves the run's clips exactly those of an
undisturbed run; with no restart left the run stops naming the server and a rerun resumes to
the same clips."""

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
from mugv_data_engine_workers import build_faulty_answerer
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
            fault_after: int = 1, saved: list | None = None) -> list[ModelServers]:  # fmt: skip
    """Curate ``sources`` on the process engine (1 worker, 1 model server running the fake
    model); with ``fault``, put the fault file once ``fault_after`` sources are staged. Returns
    the run's model servers; ``saved`` gets the staged sources' results."""
    import mugv_data.curate as curate_mod
    from mugv_data.curate import curate
    from mugv_data.engines import ProcessPoolEngine
    from mugv_data.staging import Staging
    from mugv_data_engine_workers import build_fake_models

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
    assert ("died" if fault == "die" else "did not answer within 4 s") in pool.events[0]
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
