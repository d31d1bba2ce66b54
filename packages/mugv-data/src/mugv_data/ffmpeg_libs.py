"""torchcodec on the FFmpeg that PyAV's wheel bundles, for hosts without FFmpeg's shared libraries.

torchcodec links against FFmpeg's shared libraries by their sonames (``libavutil.so.60``, ...)
and finds them through the dynamic loader's search path, which is read once, when a process
starts. PyAV's manylinux wheel ships a complete FFmpeg (with NVDEC/CUVID decoders and the CUDA
hardware device) under ``av.libs/``, renamed ``libavutil-<hash>.so.60.x``. :func:`soname_dir`
makes a folder of soname links to those files; :func:`env_with_pyav_ffmpeg` returns an
environment whose ``LD_LIBRARY_PATH`` holds that folder and ``av.libs`` (for the libraries'
own dependencies), for a child process in which torchcodec then loads FFmpeg 8 from PyAV.
The loader maps each file once (it matches files by device and inode), so PyAV and torchcodec
share one FFmpeg in that process. Linux only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LIBS = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale", "swresample")


def pyav_libs_dir() -> Path:
    """The ``av.libs`` folder of the installed PyAV wheel."""
    import av

    d = Path(av.__file__).resolve().parent.parent / "av.libs"
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: PyAV has no bundled FFmpeg here (not a manylinux wheel?)")
    return d


def soname_dir(dest: str | Path) -> Path:
    """Create (or refresh) ``dest`` with ``libNAME.so.MAJOR`` links to PyAV's FFmpeg libraries."""
    src, dest = pyav_libs_dir(), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pat = re.compile(r"^lib(\w+?)-[0-9a-f]{8}\.so\.(\d+)[.\d]*$")
    found = {}
    for f in sorted(src.iterdir()):
        m = pat.match(f.name)
        if m and m.group(1) in LIBS:
            found[m.group(1)] = (f, m.group(2))
    missing = [n for n in LIBS if n not in found]
    if missing:
        raise FileNotFoundError(f"{src}: no bundled lib{missing[0]} (found {sorted(found)})")
    for name, (f, major) in found.items():
        link = dest / f"lib{name}.so.{major}"
        tmp = dest / f".{link.name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f)
        tmp.replace(link)  # atomic: a concurrent reader sees the old or the new link
    return dest


def env_with_pyav_ffmpeg(dest: str | Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) whose ``LD_LIBRARY_PATH`` starts with the
    soname folder ``dest`` and PyAV's ``av.libs``."""
    out = dict(os.environ if env is None else env)
    parts = [str(soname_dir(dest)), str(pyav_libs_dir())]
    if out.get("LD_LIBRARY_PATH"):
        parts.append(out["LD_LIBRARY_PATH"])
    out["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
    return out
