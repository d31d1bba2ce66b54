"""Per-package releases as CI does them (scripts/release.py), against a local package index.

A pypiserver on a free local port (no upload authentication, no fallback to PyPI) receives two
stages: first mugv-formats and mugv-kernels, then mugv-vae, which depends on both. After each
stage every package just published is installed ALONE with pip into a fresh virtual
environment, mugv packages from the local index only (pip's install report must say so),
everything else from PyPI; every module of it is imported and its command runs ``--help``.
A second release of a published version is refused.

torch is installed first in the kernels and vae environments as ``torch==2.13.0`` (a CPU
wheel; in this workplace pip finds it on disk instead of downloading a CUDA build), which the
packages' ``torch>=2.11,<2.16`` accepts.

Marked ``slow`` (three environments, two with torch; a few minutes): CI (`.ci/run`) runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import release
import release_check

pytestmark = pytest.mark.slow

TORCH = "torch==2.13.0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_index(tmp_path: Path) -> Iterator[str]:
    """The upload URL of a pypiserver serving an empty folder; stopped (and waited for) at the
    end, so no process outlives the test."""
    folder = tmp_path / "index"
    folder.mkdir()
    port = _free_port()
    log = (tmp_path / "pypiserver.log").open("wb")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(port)),
            *("-a", ".", "-P", ".", "--disable-fallback", str(folder)),  # no auth, no PyPI
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: stopped as a whole below
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"pypiserver did not start: {(tmp_path / 'pypiserver.log').read_text()}"
                )
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert res.returncode == 0, (
        f"{cmd}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return res


def _install_alone(tmp: Path, index: str, name: str, *, torch: bool) -> None:
    """A fresh venv, ``pip install`` of one released package by name and version; the mugv
    distributions pip installed must come from ``index``; then every module imports and the
    command line answers ``--help``."""
    dist, version = release_check.dist_name(name), release.read_version(name)
    venv = tmp / f"venv-{name}"
    _run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    if torch:
        _run([*pip, "install", "-q", TORCH])
    report = tmp / f"report-{name}.json"
    _run(
        [
            *(*pip, "install", "-q", "--report", report, "--index-url", f"{index}simple/"),
            *("--extra-index-url", "https://pypi.org/simple", f"{dist}=={version}"),
        ]
    )
    installed = {
        item["metadata"]["name"]: item["download_info"]["url"]
        for item in json.loads(report.read_text())["install"]
    }
    mugv = {n: u for n, u in installed.items() if n.startswith("mugv")}
    assert dist in mugv, installed
    assert all(u.startswith(index) for u in mugv.values()), mugv
    module = release_check.module_name(name)
    optional = ",".join(sorted(release_check.OPTIONAL_MODULES))
    out = _run([venv / "bin" / "python", "-c", release_check.IMPORT_ALL, module, optional])
    assert out.stdout.strip() == version
    _run([venv / "bin" / dist, "--help"])


def _publish(index: str, name: str, tmp: Path) -> list[str]:
    # the index asks for no password (-P .), but twine sends one
    files = release.release(name, index, out=tmp / f"dist-{name}", username="ci", password="-")
    assert version_in(index, name)
    return sorted(p.name for p in files)


def version_in(index: str, name: str) -> bool:
    return release.read_version(name) in release.versions_on_index(
        f"{index}simple/", release_check.dist_name(name)
    )


def test_two_stages_publish_and_install_alone(local_index: str, tmp_path: Path) -> None:
    # nothing is there yet: the index answers "unknown project", not an error
    assert not version_in(local_index, "formats")

    # stage 1: the two packages every other one builds on
    for name in ("formats", "kernels"):
        files = _publish(local_index, name, tmp_path)
        stem = f"{release_check.module_name(name)}-{release.read_version(name)}"
        assert files == [f"{stem}-py3-none-any.whl", f"{stem}.tar.gz"]
    _install_alone(tmp_path, local_index, "formats", torch=False)
    _install_alone(tmp_path, local_index, "kernels", torch=True)

    # a published version is never uploaded again
    with pytest.raises(release.ReleaseError, match="already on"):
        release.release("formats", local_index, out=tmp_path / "again")
    assert not (tmp_path / "again").exists()  # refused before building

    # stage 2: mugv-vae resolves mugv-formats[video] and mugv-kernels from the index
    _publish(local_index, "vae", tmp_path)
    _install_alone(tmp_path, local_index, "vae", torch=True)
