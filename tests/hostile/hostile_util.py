"""Helpers of the hostile-input suite: tiny latent datasets, DiT runs, process-leak checks."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

# drop the rendezvous variables a pytest process may carry (the DiT tests set them)
_DIST_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(extra)
    return env


class Payload:
    """A pickle that, if ever unpickled, creates ``marker`` (harmless proof of execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


def make_latents(
    path: Path, *, n: int = 6, channels: int = 24, normalized: bool = True, vae: str = "test-vae"
) -> Path:
    from mugv_formats import LatentRecord, LatentShardWriter

    rng = np.random.default_rng(0)
    header = LatentShardWriter.make_header(
        producer="hostile-tests 0",
        vae_checkpoint_id=vae,
        latent_channels=channels,
        latent_mean=[0.0] * channels,
        latent_std=[1.0] * channels,
        latents_normalized=normalized,
        text_encoder_id="test-t5",
        text_dim=32,
        max_text_len=16,
    )
    with LatentShardWriter(path, header, samples_per_shard=3, energon=True) as w:
        for i in range(n):
            rec = LatentRecord(
                key=f"s{i:04d}", caption="c", fps=24.0, num_frames=17, height=32, width=32
            )
            lat = rng.standard_normal((channels, 3, 4, 4)).astype(np.float32)
            w.write(rec, lat, rng.standard_normal((4, 32)).astype(np.float32))
    return path


def dit_config(tmp: Path, data: Path, name: str, *, steps: int = 2, **train) -> Path:
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "data": {"path": str(data), "tokens_per_batch": 64, "loader": "energon"},
        "train": {"progress": False, "save_every": 1, "ema_decay": 0.9, **train},
        "curriculum": [{"name": "a", "steps": steps, "lr": 1e-3}],
        "output_dir": str(tmp / name),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


def descendants(pid: int) -> set[int]:
    """Every live process whose parent chain reaches ``pid`` or that is in ``pid``'s session
    (a child re-parented to init after its parent died keeps the session)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, sid = fields[0], int(fields[3])
        if sid == pid and int(entry.name) != pid and state not in ("Z", "X"):
            out.add(int(entry.name))
    return out


def kill_and_check_no_leak(proc: subprocess.Popen, *, within: float = 5.0) -> set[int]:
    """SIGKILL ``proc`` (started with ``start_new_session=True``) and return the processes of
    its session still alive ``within`` seconds later (the leak); cleans them up."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + within
    left = descendants(proc.pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = descendants(proc.pid)
    for pid in left:  # do not leak them from the test either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def rewrite_members(shard: Path, edit: Callable[[str, bytes], bytes]) -> None:
    """Rewrite a shard tar in place with ``edit(name, data)`` applied to every member (the
    tar header follows the new size): a tampered shard, as an attacker or a bad disk makes."""
    members = []
    with tarfile.open(shard) as t:
        for info in t.getmembers():
            data = edit(info.name, t.extractfile(info).read())
            info.size = len(data)
            members.append((info, data))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data))


def bump_one_value(npy: bytes) -> bytes:
    """The same ``.npy`` array with one value changed by 1 (same shape, same size)."""
    arr = np.load(io.BytesIO(npy))
    arr.flat[5] += 1.0
    buf = io.BytesIO()
    np.save(buf, arr)
    assert len(buf.getvalue()) == len(npy)
    return buf.getvalue()


def unwritable_dir(tmp: Path) -> Path:
    """A folder this process cannot create files in: ``tmp/ro`` made read-only, or (as root,
    whom permissions do not stop) a folder of a file system that refuses root's writes (sysfs);
    skips the calling test when there is none."""
    import pytest

    candidates = []
    if os.geteuid() != 0:
        ro = tmp / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        candidates.append(ro)
    candidates.append(Path("/sys/kernel"))
    for folder in candidates:
        try:
            (folder / ".probe").touch()
        except OSError:
            return folder
        (folder / ".probe").unlink()
    pytest.skip("no folder here refuses this process's writes")


# -- issue 23, item 5 (helper dit-io): declared ranges of config fields --------------------
#: numeric fields with no natural bound (a mean may be any finite number)
UNBOUNDED_FIELDS = {"objective.logit_normal_mean"}


def numeric_fields_without_range(model_cls, prefix: str = "") -> list[str]:
    """Dotted names of the int/float fields of ``model_cls`` (recursively) that declare no
    ge/gt/le/lt bound, on the field or on the items of a list/dict/tuple of numbers."""
    import typing

    import annotated_types
    from pydantic import BaseModel

    bounds = (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)

    def leaves(tp):
        """(number type, metadata) leaves of an annotation."""
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            base, *meta = typing.get_args(tp)
            return [(b, m + meta) for b, m in leaves(base)]
        if origin is not None:
            args = typing.get_args(tp)
            if origin is dict:
                args = args[1:]
            return [leaf for a in args for leaf in leaves(a)]
        if tp in (int, float):
            return [(tp, [])]
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [(tp, [])]
        return []

    missing = []
    for name, field in model_cls.model_fields.items():
        dotted = f"{prefix}{name}"
        for base, meta in leaves(field.annotation):
            if isinstance(base, type) and issubclass(base, BaseModel):
                missing += numeric_fields_without_range(base, dotted + ".")
                continue
            flat = [
                x for m in [*meta, *field.metadata] for x in getattr(m, "metadata", [m])
            ]  # Field(...) inside Annotated carries its bounds as metadata
            declared = [m for m in flat if isinstance(m, bounds)]
            if not declared and dotted not in UNBOUNDED_FIELDS:
                missing.append(dotted)
    return sorted(set(missing))
