"""Issue 23 guards of mugv-formats: claim_output / output_lock (writers never replace what
they did not write), atomic writes refuse planted symlinks, bounded YAML, and the energon
metadata gate (no code named by dataset metadata)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mugv_formats.atomic import (
    SymlinkTargetError,
    atomic_write_text,
    open_append_nofollow,
)
from mugv_formats.cli import main
from mugv_formats.config_loading import ConfigError, read_yaml_mapping, safe_load_bounded
from mugv_formats.energon import NvMetaError, check_nv_meta, write_nv_meta
from mugv_formats.outputs import (
    MARKER,
    OutputError,
    OutputLockedError,
    artifact_kind,
    claim_output,
    output_lock,
)

LATENTS = "mugv.latent-shards"


# ---------------------------------------------------------------- claim_output


def _complete(folder: Path, kind: str, header: str = "dataset.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / header).write_text(json.dumps({"format": kind, "version": "1.1"}))
    (folder / "payload.bin").write_bytes(b"old")
    return folder


def test_new_and_empty_outputs_are_claimed(tmp_path: Path) -> None:
    c = claim_output(tmp_path / "a" / "b", LATENTS)
    assert c.state == "new" and c.write_path == tmp_path / "a" / "b"
    assert json.loads((c.path / MARKER).read_text())["kind"] == LATENTS
    (tmp_path / "empty").mkdir()
    assert claim_output(tmp_path / "empty", LATENTS).state == "new"


def test_artifact_kind_reads_the_header_written_last(
    tmp_path: Path, latent_dataset: Path, clip_dataset: Path
) -> None:
    assert artifact_kind(latent_dataset) == LATENTS
    assert artifact_kind(clip_dataset) == "mugv.clip-shards"
    w = _complete(tmp_path / "w", "mugv.dit-export", "config.json")
    assert artifact_kind(w) == "mugv.dit-export"
    (w / "config.json").write_text('{"format": "mugv.dit-exp')  # truncated: not complete
    assert artifact_kind(w) is None
    assert artifact_kind(tmp_path / "missing") is None


def test_complete_artifact_refused_without_overwrite_and_swapped_with_it(
    tmp_path: Path,
) -> None:
    out = _complete(tmp_path / "out", LATENTS)
    with pytest.raises(OutputError, match=r"already holds a complete .*--overwrite"):
        claim_output(out, LATENTS)
    assert (out / "payload.bin").read_bytes() == b"old"
    c = claim_output(out, LATENTS, overwrite=True)
    assert c.state == "replace" and c.write_path != out and c.write_path.parent == out.parent
    # the old artifact stays whole until the new one is committed
    assert (out / "payload.bin").read_bytes() == b"old"
    _complete(c.write_path, LATENTS)
    (c.write_path / "payload.bin").write_bytes(b"new")
    c.commit()
    assert (out / "payload.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp siblings left


def test_interrupted_replacement_keeps_the_old_artifact(tmp_path: Path) -> None:
    out = _complete(tmp_path / "out", LATENTS)
    c = claim_output(out, LATENTS, overwrite=True)
    (c.write_path / "half.tar").write_bytes(b"x")  # killed here: never committed
    assert (out / "payload.bin").read_bytes() == b"old"
    c2 = claim_output(out, LATENTS, overwrite=True)  # the stale staging folder is ours
    assert c2.write_path == c.write_path and not (c2.write_path / "half.tar").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_things_refused_whatever_overwrite_says(tmp_path: Path, overwrite: bool) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    user = tmp_path / "videos"
    user.mkdir()
    (user / "holiday.mp4").write_bytes(b"precious")
    other = _complete(tmp_path / "clips", "mugv.clip-shards")
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    for target, pattern in [
        (run, "no mugv writer made"),
        (user, r"no mugv writer made \(holiday.mp4\)"),
        (other, "holds a mugv.clip-shards artifact, not a mugv.latent-shards"),
        (a_file, "is a file"),
    ]:
        with pytest.raises(OutputError, match=pattern) as e:
            claim_output(target, LATENTS, overwrite=overwrite)
        assert "\n" not in str(e.value) and str(target) in str(e.value)
    assert (user / "holiday.mp4").read_bytes() == b"precious"
    assert (run / "metrics.jsonl").exists() and (other / "payload.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "f.txt", "run", "videos"]
    link = tmp_path / "link"
    link.symlink_to(user)
    with pytest.raises(OutputError, match="symbolic link"):
        claim_output(link, LATENTS, overwrite=overwrite)


def test_output_equal_to_inside_or_holding_an_input_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "alias").symlink_to(data)
    for out, pattern in [
        (data, "is the input"),
        (tmp_path / "alias", "is the input"),  # same real path
        (data / "sub", "inside the input"),
        (tmp_path / "alias" / "sub", "inside the input"),
        (tmp_path, "contains the input"),
    ]:
        with pytest.raises(OutputError, match=pattern):
            claim_output(out, LATENTS, inputs=[data], overwrite=True)
    assert not (data / "sub").exists()


def test_resume_keyed_on_settings(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert claim_output(out, LATENTS, settings={"res": 64}).state == "new"
    (out / "shard-000000.tar").write_bytes(b"part")  # interrupted: no header
    assert claim_output(out, LATENTS, settings={"res": 64}).state == "resume"
    with pytest.raises(OutputError, match=r"other settings \(res: 64 -> 32\)"):
        claim_output(out, LATENTS, settings={"res": 32})
    with pytest.raises(OutputError, match="is a mugv.latent-shards folder, not a mugv.clip"):
        claim_output(out, "mugv.clip-shards", settings={"res": 64}, overwrite=True)
    c = claim_output(out, LATENTS, settings={"res": 32}, overwrite=True)
    assert c.state == "replace" and (out / "shard-000000.tar").exists()
    _complete(c.write_path, LATENTS)
    c.commit()
    assert not (out / "shard-000000.tar").exists()
    assert json.loads((out / MARKER).read_text())["settings"] == {"res": 32}


# ---------------------------------------------------------------- output_lock

_HOLD = textwrap.dedent(
    """
    import sys, time
    from mugv_formats.outputs import output_lock
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_second_run_refused_naming_the_holder_and_dead_lock_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        locked = rf"in use by another run \(pid {holder.pid} "
        with pytest.raises(OutputLockedError, match=locked), output_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out) as lock:  # the dead holder's lock is free again
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert claim_output(out, "mugv.vae-run").state == "new"  # the lock file alone is "empty"


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (and the folder): kind, bytes, mode and mtime."""
    out = {}
    for p in [folder, *sorted(folder.rglob("*"))]:
        st = os.lstat(p)
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_mtime_ns, st.st_size, data)
    return out


def test_locking_a_foreign_folder_leaves_it_byte_for_byte_unchanged(tmp_path: Path) -> None:
    """Issue 23: a writer that locks before it claims wrote ``.mugv-lock`` into a user's
    folder it then refused. The lock lives beside the folder; nothing is written inside a
    folder with nothing of ours, and the lock file goes on release."""
    user = tmp_path / "videos"
    (user / "sub").mkdir(parents=True)
    (user / "holiday.mp4").write_bytes(b"mine")
    (user / "sub" / "notes.txt").write_text("keep\n")
    before = _snapshot(user)
    with output_lock(user, "--out") as lock:
        assert lock == tmp_path / ".videos.mugv-lock" and lock.is_file()
        assert _snapshot(user) == before
        with pytest.raises(OutputError, match="holds files that no mugv writer made"):
            claim_output(user, LATENTS)
    assert _snapshot(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["videos"]  # lock file removed
    ours = _complete(tmp_path / "lat", LATENTS)  # a dataset the claim will refuse: unchanged
    before = _snapshot(ours)
    with output_lock(ours), pytest.raises(OutputError, match="pass --overwrite"):
        claim_output(ours, LATENTS)
    assert _snapshot(ours) == before


_SWAP = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mugv_formats.outputs import claim_output, output_lock
    out = Path(sys.argv[1])
    with output_lock(out):
        c = claim_output(out, "mugv.latent-shards", overwrite=True)
        (c.write_path / "dataset.json").write_text(json.dumps({"format": c.kind}))
        c.commit()
        print("swapped", flush=True)
        sys.stdin.readline()
    """
)


def test_a_replacement_swapped_in_stays_locked(tmp_path: Path) -> None:
    """``commit`` renames a new folder in place of the old one; a second run must still be
    refused until the first one ends (the lock is keyed on the path, not on the folder)."""
    out = _complete(tmp_path / "lat", LATENTS)
    holder = subprocess.Popen(
        [sys.executable, "-c", _SWAP, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "swapped"
        assert not (out / "payload.bin").exists()  # the replacement is in place
        with pytest.raises(OutputLockedError, match=rf"pid {holder.pid} "), output_lock(out):
            pass
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    with output_lock(out):  # free once the holder ended
        pass


# ---------------------------------------------------------------- symlinks


def test_atomic_writes_refuse_planted_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").symlink_to(outside)
    with pytest.raises(SymlinkTargetError, match="symbolic link"):
        atomic_write_text(run / "config.yaml", "x")
    (run / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(SymlinkTargetError, match="metrics.jsonl is a symbolic link"):
        open_append_nofollow(run / "metrics.jsonl")
    assert outside.read_text() == "keep"
    with open_append_nofollow(run / "log.txt") as f:
        f.write("a\n")
    with open_append_nofollow(run / "log.txt") as f:
        f.write("b\n")
    assert (run / "log.txt").read_text() == "a\nb\n"


# ---------------------------------------------------------------- bounded YAML


def _billion_laughs() -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        text += f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text


def test_billion_laughs_fails_fast_with_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_billion_laughs())
    assert bomb.stat().st_size < 1024
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        read_yaml_mapping(bomb)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 50_000  # KiB
    assert str(bomb) in str(e.value) and "\n" not in str(e.value)


def test_yaml_depth_size_and_alias_count_bounded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nested deeper"):
        safe_load_bounded("[" * 10_000 + "]" * 10_000)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml_mapping(big)
    many = "a: &a 1\nb: [" + ",".join(["*a"] * 2000) + "]\n"
    with pytest.raises(ConfigError, match="aliases"):
        safe_load_bounded(many)
    # ordinary YAML with anchors still loads
    assert safe_load_bounded("base: &b {lr: 1}\nrun: *b\n") == {
        "base": {"lr": 1},
        "run": {"lr": 1},
    }


# ---------------------------------------------------------------- energon metadata


def test_nv_meta_we_write_passes(latent_dataset: Path) -> None:
    check_nv_meta(latent_dataset)
    assert main(["inspect", str(latent_dataset), "--verify"]) == 0


_PLANTED = [
    ("dataset.yaml", "__module__: os\n__class__: system\n", "__module__"),
    (
        "dataset.yaml",
        "__module__: megatron.energon\n__class__: CrudeWebdataset\n"
        "sample_loader: sample_loader.py:run\n",
        "sample_loader",
    ),
    (
        "dataset.yaml",
        "__module__: megatron.energon\n__class__: CrudeWebdataset\npart_filter: x.py:f\n",
        "part_filter",
    ),
    ("sample_loader.py", "import os\n", "unexpected file"),
    ("extra.yaml", "__function__: builtins.exec\n", "unexpected file"),
    ("split.yaml", '{"split_parts": {"train": ["../../x.tar"]}}', "not a shard name"),
    ("split.yaml", '{"split_parts": {"train": []}, "__module__": "os"}', "'__module__'"),
    (".info.json", '{"shard_counts": {}, "__class__": "X"}', "'__class__'"),
]


@pytest.mark.parametrize(("name", "text", "key"), _PLANTED)
def test_planted_energon_callable_refused_and_fails_verify(
    latent_dataset: Path, name: str, text: str, key: str, capsys
) -> None:
    (latent_dataset / ".nv-meta" / name).write_text(text)
    with pytest.raises(NvMetaError, match=key) as e:
        check_nv_meta(latent_dataset)
    assert name in str(e.value) and "\n" not in str(e.value)
    assert main(["inspect", str(latent_dataset), "--verify"]) == 2
    err = capsys.readouterr().err
    assert key in err and err.count("\n") == 1


def test_nv_meta_symlink_and_bomb_refused(latent_dataset: Path, tmp_path: Path) -> None:
    meta = latent_dataset / ".nv-meta"
    (meta / "dataset.yaml").write_text(_billion_laughs())
    with pytest.raises(NvMetaError, match="dataset.yaml: YAML refused"):
        check_nv_meta(latent_dataset)
    evil = tmp_path / "evil.yaml"
    evil.write_text("__module__: os\n")
    (meta / "dataset.yaml").unlink()
    (meta / "dataset.yaml").symlink_to(evil)
    with pytest.raises(NvMetaError, match="symbolic link"):
        check_nv_meta(latent_dataset)


def test_write_nv_meta_output_passes_the_check(tmp_path: Path) -> None:
    write_nv_meta(tmp_path, {"shard-000000.tar": 2, "shard-000001.tar": 1})
    check_nv_meta(tmp_path)
