"""Where ``mugv-infer`` may write, decided before any model loads.

Every output follows the writers' rule of ``mugv_formats.outputs``: what is there and was not
written by us is never replaced; our own complete output is replaced only with ``--overwrite``;
an output equal to an input, inside one or holding one is refused; nothing is written through
a symbolic link planted at an output path; the folder must be writable.

- **Latent shards** (``--output-type latent``): a ``mugv.latent-shards`` folder claimed with
  :func:`mugv_formats.outputs.claim_output`. ``--append`` adds the samples to an existing
  complete dataset instead, only if it has the same format version and latent header (latent
  channels, normalisation, statistics, VAE id, text encoder id and width) and no key clash.
- **Frames folder** (an ``--out`` without suffix): a folder of kind ``mugv-infer.frames``
  claimed the same way; complete when ``resolved_config.yaml`` (written last) is present.
- **.mp4 / .gif files** (one per video: ``v.mp4`` or ``v_0.mp4``, ``v_1.mp4``, ...): a file
  is ours when our ``.resolved.yaml`` settings (written after it) sit beside it and name it.

A folder output (latent shards, frames, :meth:`MUGVPipeline.save_pretrained`,
:func:`mugv_infer.enhancer.save_lora`) is locked with :func:`mugv_formats.outputs.output_lock`
from before its claim until its commit: a second run onto the same folder is refused, naming
the holder (pid, host, command, start time), before it loads any model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import mugv_formats as mf
import yaml
from mugv_formats.atomic import refuse_symlink
from mugv_formats.outputs import (
    LOCK_FILE,
    MARKER,
    OutputClaim,
    OutputError,
    artifact_kind,
    check_not_nested,
    claim_output,
    marker_kind,
    output_lock,
)

from mugv_infer.sizes import num_frames

FRAMES_KIND = "mugv-infer.frames"
RESOLVED_IN_FOLDER = "resolved_config.yaml"


def resolved_path(out: Path, folder: Path | None = None) -> Path:
    """Where the resolved settings of ``out`` are written (last); ``folder``: the folder
    actually written when it is not ``out`` (a replacement's temporary sibling)."""
    if out.suffix == "":
        return (folder or out) / RESOLVED_IN_FOLDER
    return out.with_name(out.stem + ".resolved.yaml")


def video_paths(out: Path, n: int, folder: Path | None = None) -> list[Path]:
    """The files / frame folders ``n`` videos are written to (``folder`` as above)."""
    if out.suffix:
        return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]
    root = folder or out
    return [root] if n == 1 else [root / f"video_{i}" for i in range(n)]


@dataclass
class OutputPlan:
    """Where one run writes: ``write_path`` (``out`` itself, or a temporary sibling that
    :meth:`commit` swaps in), the claim of a folder output, and the files to check again."""

    out: Path
    write_path: Path
    claim: OutputClaim | None = None
    append: bool = False
    locks: contextlib.ExitStack = dataclass_field(default_factory=contextlib.ExitStack, repr=False)

    def commit(self) -> None:
        if self.claim is not None:
            self.claim.commit()

    def release(self) -> None:
        """Give up the output's lock (the run is over; safe to call more than once)."""
        self.locks.close()


def _writable_ancestor(path: Path, what: str) -> None:
    """The nearest existing folder above ``path`` is a folder this process can create files
    in (probed by creating one: permissions, read-only mounts and quotas alike)."""
    parent = path.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mugv-infer-probe-", dir=parent)
    except OSError as e:
        raise OutputError(
            f"{what} {path}: cannot write in {parent} ({e.strerror or e}); choose a writable place"
        ) from None
    os.close(fd)
    os.unlink(probe)


def _is_our_video(video: Path, settings: Path) -> bool:
    if settings.is_symlink() or not settings.is_file():
        return False
    try:
        data = yaml.safe_load(settings.read_text()[: 1 << 20])
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    if not isinstance(data, dict) or data.get("output_type") != "video":
        return False
    return isinstance(data.get("out"), str) and Path(data["out"]).stem in video.stem


def _check_file(target: Path, settings: Path, overwrite: bool, what: str) -> None:
    refuse_symlink(target, what)
    if target.is_dir():
        raise OutputError(
            f"{what} {target} is a folder; give a file name ending in {target.suffix}"
        )
    if target.exists():
        if not _is_our_video(target, settings):
            raise OutputError(
                f"{what} {target} exists and was not written by mugv-infer (no {settings.name} "
                "naming it beside it); refusing to replace it (even with --overwrite)"
            )
        if not overwrite:
            raise OutputError(
                f"{what} {target} already holds a video written by mugv-infer; pass --overwrite "
                "to replace it, or choose another --out"
            )


def _check_folder_entries(folder: Path, names, what: str) -> None:
    for name in names:
        refuse_symlink(folder / name, what)


def plan_outputs(cfg, n_videos: int, inputs, *, settings: dict, claim: bool = True) -> OutputPlan:
    """Check (and, with ``claim``, prepare) the outputs of a generate / enhance config;
    ``inputs``: the paths read (refused as outputs). One-line :class:`OutputError`s."""
    out = Path(cfg.out)
    what = "--out"
    overwrite = bool(getattr(cfg, "overwrite", False))
    append = bool(getattr(cfg, "append", False))
    latent = getattr(cfg, "output_type", "video") == "latent"
    check_not_nested(out, inputs, what)
    if latent or out.suffix == "":
        if out.exists() and not out.is_dir() and not out.is_symlink():
            raise OutputError(f"{what} {out} is a file; a folder is written here")
        refuse_symlink(out, what)
        _writable_ancestor(out / "probe" if out.is_dir() else out, what)
        if latent and append:
            check_append(out, cfg)
            if not claim:
                return OutputPlan(out, out, None, append=True)
            plan = OutputPlan(out, out, None, append=True)
            plan.locks.enter_context(output_lock(out, what))
            return plan
        if out.is_dir():
            names = [RESOLVED_IN_FOLDER]
            if not latent:
                names += [p.name for p in video_paths(out, n_videos)]
                names += [f"frame_{i:05d}.png" for i in range(_frames(cfg))]
            _check_folder_entries(out, names, what)
        if not claim:
            return OutputPlan(out, out)
        kind = mf.LATENT_SHARDS_FORMAT if latent else FRAMES_KIND
        header = None if latent else RESOLVED_IN_FOLDER
        locks = contextlib.ExitStack()
        with contextlib.ExitStack() as on_error:
            on_error.callback(locks.close)
            locks.enter_context(output_lock(out, what))  # the claim is decided under the lock
            c = claim_folder(
                out, kind, header, overwrite=overwrite, inputs=inputs, settings=settings
            )
            on_error.pop_all()
        return OutputPlan(out, c.write_path, c, locks=locks)
    resolved = resolved_path(out)
    for target in video_paths(out, n_videos):
        _check_file(target, resolved, overwrite, what)
        _writable_ancestor(target, what)
    refuse_symlink(resolved, what)
    if resolved.is_dir():
        raise OutputError(f"{what} settings file {resolved} is a folder")
    return OutputPlan(out, out)


@contextlib.contextmanager
def locked_folder(
    path: str | Path,
    kind: str,
    header: str | None,
    *,
    overwrite: bool = False,
    inputs=(),
    settings: dict | None = None,
    what: str = "--out",
) -> Iterator[OutputClaim]:
    """:func:`claim_folder` under :func:`mugv_formats.outputs.output_lock`, held until the
    block ends: write into ``claim.write_path`` and ``claim.commit()`` inside the block."""
    with output_lock(path, what):  # a symbolic link at ``path`` is refused (OutputError)
        yield claim_folder(
            path, kind, header, overwrite=overwrite, inputs=inputs, settings=settings, what=what
        )


def claim_folder(
    path: str | Path,
    kind: str,
    header: str | None,
    *,
    overwrite: bool = False,
    inputs=(),
    settings: dict | None = None,
    what: str = "--out",
) -> OutputClaim:
    """:func:`claim_output` for a folder of ours; ``header``: the file written last that
    marks a complete folder of a ``kind`` mugv_formats does not know (a frames folder's
    ``resolved_config.yaml``, a saved pipeline's ``pipeline.json``), so that such a folder
    too is replaced only with ``overwrite``. An interrupted one of ours is emptied: it is
    written again whole. Write into ``claim.write_path``, then ``claim.commit()``."""
    path = Path(path)
    mark = marker_kind(path) if path.is_dir() and not path.is_symlink() else None
    complete = header and mark is not None and mark[0] == kind and (path / header).is_file()
    if complete and not overwrite:
        raise OutputError(
            f"{what} {path} already holds a complete {kind} written by mugv-infer; pass "
            f"--overwrite (overwrite=True) to replace it, or choose another {what}"
        )
    c = claim_output(path, kind, overwrite=overwrite, inputs=inputs, settings=settings, what=what)
    if c.state == "resume":
        _clear_folder(c.write_path)
    return c


def _frames(cfg) -> int:
    try:
        return num_frames(cfg.frames) if hasattr(cfg, "frames") else 0
    except ValueError:
        return 0


def _clear_folder(folder: Path) -> None:
    for p in folder.iterdir():
        if p.name in (MARKER, LOCK_FILE):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


APPEND_FIELDS = (
    "latent_channels",
    "latents_normalized",
    "latent_mean",
    "latent_std",
    "vae_checkpoint_id",
    "text_encoder_id",
    "text_dim",
)
"""Header fields an appended sample must share with the dataset it joins."""


def check_append(out: Path, cfg) -> None:
    """``--append``: ``out`` must be a complete latent dataset of this format version."""
    if artifact_kind(out) != mf.LATENT_SHARDS_FORMAT:
        raise OutputError(
            f"--append: {out} is not a complete {mf.LATENT_SHARDS_FORMAT} dataset (no "
            "dataset.json naming that format)"
        )


def check_append_header(out: Path, new) -> object:
    """The existing dataset's header if ``new`` (the header our samples would get) fits it,
    else one-line OutputError naming the first field that differs."""
    try:
        old = mf.LatentDataset(out).header
    except (mf.FormatError, ValueError, OSError) as e:
        raise OutputError(f"--append: {out} is not a readable latent dataset ({e})") from None
    if old.version != new.version:
        raise OutputError(
            f"--append: {out} is format version {old.version}, this writer makes {new.version}"
        )
    for field in APPEND_FIELDS:
        a, b = getattr(old, field), getattr(new, field)
        if isinstance(a, list) and isinstance(b, list):
            same = len(a) == len(b) and all(
                abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a, b)
            )
        else:
            same = a == b
        if not same:
            raise OutputError(
                f"--append: {out}/dataset.json has {field}={_short(a)}, the generated samples "
                f"{_short(b)}; refusing to mix them in one dataset"
            )
    return old


def _short(v) -> str:
    if isinstance(v, list) and len(v) > 4:
        return f"[{', '.join(f'{x:g}' for x in v[:3])}, ...] ({len(v)} values)"
    return repr(v)
