"""The model pool (engine.model_pool): per-source workers send the model stages' frames to
actors holding the models. In-process stand-ins for the actors check scores, verdicts,
embeddings and the in-flight bound against the in-process path; a local Ray run (slow) checks
the real actors end to end against the sequential engine."""

from __future__ import annotations

import json
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mugv_data.config import load_config
from mugv_data.model_pool import (
    ModelPoolClient,
    ModelWorker,
    model_pool_resources,
    pack_clip,
    unpack_clip,
)
from mugv_data.per_source import SourceProcessor, worker_resources
from mugv_data.stages.base import Clip, ClipFrames

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")


def _live_children() -> set[int]:
    """Pids of this process's live multiprocessing children (a test compares the set after
    its run with the set before: helpers started once per process by earlier tests, e.g.
    the checkpoint writer's queue manager, are not this test's leftovers)."""
    return {p.pid for p in multiprocessing.active_children() if p.is_alive()}


DEMO = Path(__file__).parents[1] / "configs" / "demo.yaml"
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """(tiny HF CLIP folder, LAION-style head file, tiny open_clip folder), random weights."""
    from mugv_data.random_models import write_aesthetic_models
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("pool_models")
    clip, head = write_aesthetic_models(root, "tiny", seed=0)
    oc = open_clip.CLIP(**TINY_OPEN_CLIP)
    with torch.no_grad():
        for p in oc.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.detach().clone().contiguous() for k, v in oc.state_dict().items()}
    (root / "oc").mkdir()
    save_file(state, str(root / "oc" / "open_clip_model.safetensors"))
    (root / "oc" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    return clip, head, root / "oc"


def model_overrides(tiny_models, aesthetic_min: float | None = None) -> list[str]:
    clip, head, oc = tiny_models
    sets = [
        "filters.text.enabled=false",
        "filters.aesthetic.enabled=true",
        f"filters.aesthetic.clip_path={clip}",
        f"filters.aesthetic.head_path={head}",
        "filters.aesthetic.device=cpu",
        "filters.aesthetic.num_frames=2",
        "filters.clip_embedding.enabled=true",
        f"filters.clip_embedding.model_path={oc}",
        "filters.clip_embedding.num_frames=3",
    ]
    if aesthetic_min is not None:
        sets.append(f"filters.aesthetic.min={aesthetic_min}")
    return sets


@pytest.fixture(scope="module")
def bikes_reference(tiny_models, samples):
    """(aesthetic cut, in-process result of bikes.mp4 at that cut): the cut rejects the
    lowest-scored clip at the aesthetic stage."""
    ref_cfg = load_config(DEMO, overrides=model_overrides(tiny_models))
    ref = SourceProcessor(ref_cfg, encode=False)(samples / "bikes.mp4")
    scores = sorted(c.scores["aesthetic"] for c in ref.clips if "aesthetic" in c.scores)
    assert len(scores) >= 3
    cut = (scores[0] + scores[1]) / 2
    cfg = load_config(DEMO, overrides=model_overrides(tiny_models, aesthetic_min=cut))
    return cut, SourceProcessor(cfg, encode=False)(samples / "bikes.mp4")


def assert_same_outcomes(ref, got) -> None:
    """The pooled run of a source gives the in-process verdicts (an aesthetic rejection among
    them), scores (1e-5) and open_clip embeddings, with the model stages timed as the pool."""
    assert "model_pool" in got.timings and "aesthetic" not in got.timings
    assert [(c.key, c.rejected_stage, c.reason) for c in got.clips] == [
        (c.key, c.rejected_stage, c.reason) for c in ref.clips
    ]
    assert any(c.rejected_stage == "aesthetic" for c in got.clips)
    for a, b in zip(ref.clips, got.clips, strict=True):
        assert set(a.scores) == set(b.scores)
        for k, v in a.scores.items():
            assert b.scores[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
        if a.clip_embedding is None:
            assert b.clip_embedding is None
        else:  # the open_clip stage's embedding (it runs after the aesthetic stage's)
            np.testing.assert_allclose(b.clip_embedding, a.clip_embedding, atol=1e-5)


def test_packed_clip_carries_only_the_frames_the_model_stages_read():
    arr = np.arange(10 * 4 * 6 * 3, dtype=np.uint8).reshape(10, 4, 6, 3)
    c = Clip("s-0001", "/v/s.mp4", 1, 20, 30, 0.8, 1.2, 25.0)
    c.frames = ClipFrames(10, 25.0, lambda idx: arr[list(idx)])
    c.scores["sharpness"] = 300.0
    c.reject("motion", "motion 0.1 < min 0.2")

    class Stage:
        def __init__(self, k):
            self.config = type("C", (), {"num_frames": k})()

    d = pack_clip(c, [Stage(1), Stage(3)])
    assert d["indices"] == sorted(set(c.frames.evenly(1)) | set(c.frames.evenly(3))) == [1, 5, 8]
    u = unpack_clip(d)
    assert (u.key, u.source, u.index, u.start_frame, u.end_frame) == (
        "s-0001",
        "/v/s.mp4",
        1,
        20,
        30,
    )
    assert np.array_equal(u.frames.get([8, 1]), arr[[8, 1]])
    assert u.scores == {"sharpness": 300.0}
    assert (u.rejected_stage, u.reason) == ("motion", "motion 0.1 < min 0.2")
    with pytest.raises(KeyError, match=r"frames \[2\] of clip s-0001 were not sent"):
        u.frames.get([2])


def test_pool_path_equals_in_process_models_with_bounded_requests(
    tiny_models, samples, bikes_reference
):
    """bikes.mp4 through a SourceProcessor whose model stages run on two stand-in actors
    (threads running ModelWorker): the same verdicts, scores and embeddings as the in-process
    models; at most max_in_flight requests out; the worker's own stages never load a model."""
    from mugv_data.stages.aesthetic import AestheticFilter

    cut, ref = bikes_reference
    cfg = load_config(DEMO, overrides=model_overrides(tiny_models, aesthetic_min=cut))

    actors = [ModelWorker(cfg), ModelWorker(cfg)]
    lock = threading.Lock()
    out = {"now": 0, "peak": 0, "per_actor": [0, 0]}

    def call(actor, request):
        try:
            return actor(request)
        finally:
            with lock:
                out["now"] -= 1

    def submit(actor, request):
        with lock:
            out["now"] += 1
            out["peak"] = max(out["peak"], out["now"])
            out["per_actor"][actors.index(actor)] += 1
        return pool.submit(call, actor, request)

    with ThreadPoolExecutor(2) as pool:
        client = ModelPoolClient(
            actors, submit, lambda fut: fut.result(), batch_clips=1, max_in_flight=2
        )
        proc = SourceProcessor(cfg, encode=False, model_pool=client)
        got = proc(samples / "bikes.mp4")
    assert all(s._scorer is None for s in proc.stages if isinstance(s, AestheticFilter))
    candidates = [c for c in ref.clips if c.rejected_stage != "split"]
    assert client.requests == len(candidates) and out["peak"] == client.peak_in_flight == 2
    assert min(out["per_actor"]) >= 1  # both actors took requests
    assert_same_outcomes(ref, got)


def test_pool_resources_take_the_gpu_and_the_workers_none(tiny_models):
    sets = [*model_overrides(tiny_models), "filters.aesthetic.device=cuda"]
    cfg = load_config(DEMO, overrides=[*sets, "engine.model_pool.gpus=0.5"])
    assert worker_resources(cfg).gpus == 0.5  # in-worker models: the worker takes a GPU share
    assert worker_resources(cfg, model_stages=False).gpus == 0.0
    r = model_pool_resources(cfg)
    assert (r.cpus, r.gpus) == (1.0, 0.5)
    cpu = load_config(DEMO, overrides=model_overrides(tiny_models))
    assert model_pool_resources(cpu).gpus == 0.0


@pytest.mark.slow
def test_curation_on_local_ray_with_a_model_pool_equals_sequential(tiny_models, tmp_path):
    """engine.kind=ray with a model pool of 2 CPU actors (num_gpus=0 standing in for GPU
    actors) fed by a per-source worker: the same shards, verdicts and scores as the
    sequential engine."""
    pytest.importorskip("ray")
    from mugv_data.curate import curate, read_rejects
    from mugv_data.synth import scene, write_video
    from mugv_formats import ClipDataset

    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        write_video(d / f"v{i}.mp4", scene(30, seed=11 + i) + scene(30, seed=21 + i))

    def run(name, cut, *extra):
        cfg = load_config(
            None,
            inputs=[str(d)],
            output=str(tmp_path / name),
            overrides=[*model_overrides(tiny_models, cut), "split.min_clip_s=1.0", *extra],
        )
        s = curate(cfg, progress=False)
        recs = {r.key: r for r in ClipDataset(tmp_path / name).records()}
        rej = sorted((r["key"], r["stage"]) for r in read_rejects(tmp_path / name))
        return s, recs, rej

    # the random aesthetic head's scores, then a cut that rejects the lower half
    _, every, _ = run("all", -1e9, "engine.kind=sequential")
    cut = float(np.median([r.scores["aesthetic"] for r in every.values()]))
    _, seq, seq_rej = run("seq", cut, "engine.kind=sequential")
    assert ("aesthetic" in {stage for _, stage in seq_rej}) and seq
    s, pooled, pooled_rej = run(
        "ray",
        cut,
        "engine.kind=ray",
        "engine.ray_num_cpus=2",
        "engine.workers=1",
        "engine.model_pool.actors=2",
        "engine.model_pool.cpus=0.5",  # 1 of the 2 CPUs left for the per-source worker
        "engine.model_pool.batch_clips=1",
    )
    assert "model_pool" in s.timings and "aesthetic" not in s.timings
    assert sorted(pooled) == sorted(seq)
    assert pooled_rej == seq_rej
    for k, r in seq.items():
        assert pooled[k].sha256 == r.sha256
        for name, v in r.scores.items():
            assert pooled[k].scores[name] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, name)


def test_ray_pool_actors_declare_their_resources_and_workers_size_on_the_rest(tiny_models):
    """RayEngine.start_pool with a stand-in ``ray`` (cluster of 4 CPUs, 1 GPU): the pool
    actors' options, the per-source workers sized on the CPUs left, a pool asking for more
    GPUs than the cluster has refused, and stop_pools giving the resources back."""
    from mugv_data.engines import RayEngine, WorkerSpec
    from mugv_data.model_pool import build_model_worker
    from mugv_data.stages.base import Resources

    made, killed = [], []

    class FakeRay:
        def cluster_resources(self):
            return {"CPU": 4.0, "GPU": 1.0, "memory": float(64 << 30)}

        def remote(self, **opts):
            def wrap(cls):
                class Handle:
                    @staticmethod
                    def remote(*args):
                        made.append((opts, args))
                        return object()

                return Handle

            return wrap

        def kill(self, actor):
            killed.append(actor)

    sets = [*model_overrides(tiny_models), "filters.aesthetic.device=cuda"]
    cfg = load_config(DEMO, overrides=[*sets, "engine.kind=ray", "engine.workers=0"])
    eng = object.__new__(RayEngine)
    eng.config, eng._ray, eng._pools = cfg, FakeRay(), []
    eng._reserved = {"CPU": 0.0, "GPU": 0.0, "memory": 0.0}
    spec = WorkerSpec("models", build_model_worker, model_pool_resources(cfg))
    actors = eng.start_pool(spec, 1, max_restarts=3)
    assert len(actors) == 1
    opts, args = made[0]
    assert opts == {
        "num_cpus": 1.0,
        "num_gpus": 1.0,
        "max_restarts": 3,
        "max_task_retries": 0,  # the pool's client resends (RayPoolConnections)
        "concurrency_groups": {"control": 1},  # whoami answers while a call hangs
    }
    assert args[0] is build_model_worker and args[2] is True  # models loaded at start
    assert eng._num_actors(Resources(cpus=1)) == 3  # 4 CPUs less the pool's one
    with pytest.raises(ValueError, match="declare 1 GPU in all but the Ray cluster has 0"):
        eng.start_pool(spec, 1, max_restarts=0)
    eng.stop_pools()
    assert killed == actors and eng._num_actors(Resources(cpus=1)) == 4


def test_a_lost_pool_stops_the_run_and_rejects_no_source(tiny_models, samples):
    """An unreachable pool (ModelPoolUnavailable from the client) propagates out of the
    per-source worker instead of turning into a 'decode-error' reject, and the client's
    in-flight counts are released."""
    from mugv_data.model_pool import ModelPoolUnavailable

    cfg = load_config(DEMO, overrides=model_overrides(tiny_models))

    def gone(handle):
        raise ModelPoolUnavailable("engine.model_pool: an actor is gone after its restarts")

    client = ModelPoolClient(
        ["a", "b"], lambda actor, request: None, gone, batch_clips=1, max_in_flight=2
    )
    proc = SourceProcessor(cfg, encode=False, model_pool=client)
    with pytest.raises(ModelPoolUnavailable, match="actor is gone"):
        proc(samples / "carphone_pristine.mp4")
    assert client.requests >= 1 and set(client.outstanding.values()) == {0}


# -- the process engine's model servers ------------------------------------------------------


def _pool_config(tiny_models, cut: float | None, *extra: str):
    return load_config(
        DEMO,
        overrides=[
            *model_overrides(tiny_models, cut),
            "engine.kind=process",
            "engine.model_pool.actors=2",
            "engine.model_pool.batch_clips=1",
            "engine.model_pool.max_in_flight=2",
            *extra,
        ],
    )


def test_process_model_servers_equal_in_process_models(tiny_models, samples, bikes_reference):
    """bikes.mp4 through a SourceProcessor (this process standing in for a per-source worker)
    whose model stages run on 2 real model-server processes of the process engine: the same
    verdicts (an aesthetic rejection among them), scores (1e-5) and open_clip embeddings as
    the in-process models; both servers used, at most max_in_flight requests out, the worker's
    own model stages never loaded. Then a server is SIGKILLed: the next source stops with
    ModelPoolUnavailable (not a reject: no restart is allowed here; restarts are in
    test_model_server_restarts.py), and the servers stop with the engine, leaving no
    process."""
    import os
    import signal

    from mugv_data.curate import source_spec
    from mugv_data.engines import ProcessPoolEngine
    from mugv_data.model_pool import ModelPoolUnavailable, build_pooled_source_worker
    from mugv_data.stages.aesthetic import AestheticFilter
    from mugv_data.stages.clip_embedding import ClipEmbeddingStage
    from mugv_data_procs import wait_dead

    cut, ref = bikes_reference
    cfg = _pool_config(tiny_models, cut, "engine.model_pool.max_restarts=0")

    with ProcessPoolEngine(cfg) as engine:
        spec = source_spec(cfg, engine)  # starts the pool: 2 servers, models loaded
        (servers,) = engine.pools
        pids = servers.pids
        assert len(set(pids)) == 2 and all(servers.alive())
        assert spec.resources.gpus == 0.0
        proc = build_pooled_source_worker(cfg, spec.build.keywords["actors"])
        got = proc(samples / "bikes.mp4")
        client = proc.model_pool
        sent = client.requests_per_actor.copy()
        os.kill(pids[1], signal.SIGKILL)
        servers._procs[1].join(10)
        with pytest.raises(ModelPoolUnavailable, match="model server 1 is gone"):
            proc(samples / "bikes.mp4")
        assert set(client.outstanding.values()) == {0}
    for s in proc.stages:
        if isinstance(s, AestheticFilter):
            assert s._scorer is None  # the worker never loaded the model
        if isinstance(s, ClipEmbeddingStage):
            assert s._embedder is None
    assert wait_dead(pids, 1.0) == []  # stopped with the engine
    candidates = [c for c in ref.clips if c.rejected_stage != "split"]
    assert sum(sent) == len(candidates) >= 3
    assert client.peak_in_flight == 2 and min(sent) >= 1  # both servers took requests
    assert_same_outcomes(ref, got)


@pytest.mark.slow
def test_curation_with_model_servers_survives_a_killed_server_and_resumes_exactly(
    tiny_models, tmp_path, monkeypatch
):
    """engine.kind=process with 2 model servers fed by 1 per-source worker: a server SIGKILLed
    after the first source is staged stops the run with ModelPoolUnavailable (no source
    rejected, no process left); running again resumes to the sequential engine's shards,
    verdicts (an aesthetic rejection among them) and scores."""
    import os
    import signal

    from mugv_data.curate import curate, read_rejects
    from mugv_data.engines import ProcessPoolEngine
    from mugv_data.model_pool import ModelPoolUnavailable
    from mugv_data.staging import Staging
    from mugv_data.synth import scene, write_video
    from mugv_formats import ClipDataset

    children_before = _live_children()
    d = tmp_path / "in"
    d.mkdir()
    for i in range(4):
        write_video(d / f"v{i}.mp4", scene(30, seed=11 + i) + scene(30, seed=21 + i))

    def config(name, cut, *extra):
        return load_config(
            None,
            inputs=[str(d)],
            output=str(tmp_path / name),
            overrides=[*model_overrides(tiny_models, cut), "split.min_clip_s=1.0", *extra],
        )

    def result(name):
        recs = {r.key: r for r in ClipDataset(tmp_path / name).records()}
        rej = sorted((r["key"], r["stage"]) for r in read_rejects(tmp_path / name))
        return recs, rej

    curate(config("all", -1e9, "engine.kind=sequential"), progress=False)
    every, _ = result("all")
    cut = float(np.median([r.scores["aesthetic"] for r in every.values()]))
    curate(config("seq", cut, "engine.kind=sequential"), progress=False)
    seq, seq_rej = result("seq")
    assert "aesthetic" in {stage for _, stage in seq_rej} and seq

    pooled = config(
        "pool",
        cut,
        "engine.kind=process",
        "engine.workers=1",
        "engine.max_in_flight=1",
        "engine.model_pool.actors=2",
        "engine.model_pool.batch_clips=1",
        "engine.model_pool.max_restarts=0",
    )
    engines: list[ProcessPoolEngine] = []
    start_pool, save = ProcessPoolEngine.start_pool, Staging.save

    def recording_start_pool(self, *a, **k):
        engines.append(self)
        return start_pool(self, *a, **k)

    staging_dirs = []

    def save_then_kill(self, res):
        save(self, res)
        staging_dirs.append(self.sources)
        if len(list(self.sources.glob("*.json"))) == 1:
            os.kill(engines[0].pools[0].pids[1], signal.SIGKILL)

    monkeypatch.setattr(ProcessPoolEngine, "start_pool", recording_start_pool)
    monkeypatch.setattr(Staging, "save", save_then_kill)
    with pytest.raises(ModelPoolUnavailable, match="model server 1 is gone"):
        curate(pooled, progress=False)
    staged = list(staging_dirs[0].glob("*.json"))
    assert 1 <= len(staged) < 4
    for f in staged:  # no source was turned into a reject by the lost server
        assert json.loads(f.read_text())["reject_stage"] is None
    assert not engines[0].pools  # stopped with the engine
    assert not _live_children() - children_before  # earlier tests' long-lived helpers excluded

    monkeypatch.setattr(Staging, "save", save)
    s = curate(pooled, progress=False)  # resumes
    assert "model_pool" in s.timings and "aesthetic" not in s.timings
    got, got_rej = result("pool")
    assert sorted(got) == sorted(seq) and got_rej == seq_rej
    for k, r in seq.items():
        assert got[k].sha256 == r.sha256
        for name, v in r.scores.items():
            assert got[k].scores[name] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, name)


@pytest.mark.slow
def test_model_pool_benchmark_runs_in_tiny_mode(tmp_path):
    """benchmarks/model_pool.py --tiny --device cpu (the GPU command's first run): both rows
    score every clip of the same sources; the pool holds one model copy for its workers."""
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "model_pool.py"
    out = tmp_path / "model_pool.json"
    subprocess.run(
        [sys.executable, str(script), "--tiny", "--device", "cpu", "--workers", "2", "--json",
         str(out), "--md", str(tmp_path / "model_pool.md"), "--work", str(tmp_path / "w")],
        check=True, timeout=900,
    )  # fmt: skip
    r = json.loads(out.read_text())
    per, pool = r["rows"]
    assert (per["mode"], pool["mode"]) == ("per-worker", "pool")
    assert per["clips"] == pool["clips"] == r["sources"] * r["shots"]
    assert (per["model_copies"], pool["model_copies"], pool["servers"]) == (2, 1, 1)
    assert "model_pool" in pool["worker_seconds"] and "aesthetic" not in pool["worker_seconds"]
    assert "aesthetic" in per["worker_seconds"]
    t = r["transport"]  # 16 clips x 4 frames of 96x128 RGB, each clip's own copy
    assert t["request_mb"] == round(16 * 4 * 96 * 128 * 3 / 1e6, 1) and t["clips_per_hour"] > 0
    assert "| pool | 2 | 1 | 1 |" in (tmp_path / "model_pool.md").read_text()


def test_no_pool_starts_when_every_source_is_staged(tiny_models):
    """A resumed run whose sources are all staged starts no worker and no model pool (it
    would load the models for nothing)."""
    from mugv_data.curate import run_sources

    class Untouchable:
        has_pools = True

        def start_pool(self, *a, **k):
            raise AssertionError("a model pool was started")

        def map(self, *a, **k):
            raise AssertionError("workers were started")

        def stop_pools(self):
            raise AssertionError("no pool to stop")

    class AllStaged:
        def done(self, sid):
            return True

    cfg = _pool_config(tiny_models, None)
    run_sources(Untouchable(), cfg, [Path("/v/a.mp4"), Path("/v/b.mp4")], AllStaged(), False)


@pytest.mark.slow
def test_cli_names_a_model_server_that_cannot_load_its_model(samples, tmp_path, capsys):
    """mugv-data curate with a model pool whose aesthetic weights are missing: one line naming
    the setting, exit code 2, no traceback."""
    from mugv_data.cli import main

    code = main(
        ["curate", "--input", str(samples / "carphone_pristine.mp4"), "--output",
         str(tmp_path / "out"), "--engine", "process", "--set", "engine.model_pool.actors=1",
         "--set", "filters.aesthetic.enabled=true", "--set", "filters.aesthetic.device=cpu",
         "--set", f"filters.aesthetic.clip_path={tmp_path / 'no-clip'}",
         "--set", f"filters.aesthetic.head_path={tmp_path / 'no-head.pth'}"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("mugv-data curate: error: engine.model_pool: models server 0 could")
    assert "filters.aesthetic.clip_path" in line and "no-clip" in line
    assert "Traceback" not in err and "sources:" not in err  # no progress bar started
