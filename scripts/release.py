#!/usr/bin/env python3
"""Release ONE package to a package index, as CI does it.

    uv run python scripts/release.py NAME --repository-url URL [--index-url SIMPLE_URL]

``NAME`` is a short package name (``formats``, ``kernels``, ``vae``, ... or ``mugv`` for the
umbrella). In order, and stopping at the first failure:

1. the version in ``packages/<dist>/pyproject.toml`` is not already on the index (its simple
   page, ``--index-url``, default ``URL/simple/``, lists no file of that version);
2. ``packages/<dist>/CHANGELOG.md`` has a ``## VERSION`` section with text under it;
3. wheel and sdist are built without workspace sources (``uv build --package DIST
   --no-sources``) into a fresh folder, so siblings resolve from the index as users get them;
4. ``twine check --strict`` passes on both files;
5. ``twine upload --repository-url URL`` uploads them (credentials: ``--username`` /
   ``--password`` or twine's own ``TWINE_USERNAME`` / ``TWINE_PASSWORD``).

Release a package's mugv dependencies first (``formats`` and ``kernels`` before ``vae``).
``--dry-run`` does steps 1-4 only. Exit code 2 with one line ``release NAME: error: ...`` when a
check fails.
"""

from __future__ import annotations

import argparse
import html.parser
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from mugv_formats.console import run_command
from release_check import ALL, ROOT, dist_name, uv


class ReleaseError(ValueError):
    """A release check failed (the message says which and why)."""


def package_dir(name: str) -> Path:
    return ROOT / "packages" / dist_name(name)


def read_version(name: str) -> str:
    return tomllib.loads((package_dir(name) / "pyproject.toml").read_text())["project"]["version"]


def changelog_entry(name: str, version: str) -> str:
    """The text of the ``## VERSION`` section of the package's CHANGELOG.md (ReleaseError if
    there is none or it is empty)."""
    path = package_dir(name) / "CHANGELOG.md"
    if not path.is_file():
        raise ReleaseError(f"{path}: no changelog")
    heading = re.compile(rf"^## {re.escape(version)}(\s|\(|$)")
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if heading.match(line)), None)
    if start is None:
        raise ReleaseError(f"{path}: no '## {version}' section for the version being released")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = "\n".join(lines[start + 1 : end]).strip()
    if not body:
        raise ReleaseError(f"{path}: the '## {version}' section is empty")
    return body


def _normalize(project: str) -> str:
    """PEP 503 name normalisation (also used for the name part of file names)."""
    return re.sub(r"[-_.]+", "-", project).lower()


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.names.append(href.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1])


def versions_on_index(index_url: str, dist: str, *, timeout_s: float = 30.0) -> set[str]:
    """Versions of ``dist`` that have a wheel or sdist on a PEP 503 simple index (an empty set
    for a project the index does not know)."""
    url = f"{index_url.rstrip('/')}/{_normalize(dist)}/"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            page = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return set()
        raise ReleaseError(f"index {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise ReleaseError(f"index {url}: cannot be read ({e.reason})") from None
    parser = _Links()
    parser.feed(page)
    found = set()
    for filename in parser.names:
        m = re.match(r"^(?P<name>.+?)-(?P<version>[^-]+?)(-.*\.whl|\.tar\.gz|\.zip)$", filename)
        if m and _normalize(m["name"]) == _normalize(dist):
            found.add(m["version"])
    return found


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        tail = " | ".join((res.stdout + res.stderr).strip().splitlines()[-5:])
        raise ReleaseError(f"{what} failed (exit {res.returncode}): {tail}")


def build(name: str, out: Path) -> list[Path]:
    """Wheel and sdist of one package, built without workspace sources, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    dist = dist_name(name)
    _run([*uv(), "build", "-q", "--package", dist, "--no-sources", "--out-dir", str(out)], "build")
    files = sorted(p for p in out.iterdir() if p.suffix == ".whl" or p.name.endswith(".tar.gz"))
    version = read_version(name)
    stem = dist.replace("-", "_")
    want = {f"{stem}-{version}.tar.gz"}
    if {p.name for p in files if p.name.endswith(".tar.gz")} != want or not any(
        p.name.startswith(f"{stem}-{version}-") for p in files if p.suffix == ".whl"
    ):
        raise ReleaseError(f"build of {dist} {version} wrote {[p.name for p in files]}")
    return files


def twine() -> list[str]:
    exe = shutil.which("twine")
    return [exe] if exe else [sys.executable, "-m", "twine"]


def release(
    name: str,
    repository_url: str,
    *,
    index_url: str | None = None,
    out: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    dry_run: bool = False,
) -> list[Path]:
    """Check, build, check and upload one package; returns the files built (see the module
    docstring for the steps). ReleaseError names the first check that failed."""
    if name not in ALL:
        raise ReleaseError(f"unknown package {name!r}; choose from {', '.join(ALL)}")
    dist, version = dist_name(name), read_version(name)
    index_url = index_url or f"{repository_url.rstrip('/')}/simple/"
    if version in versions_on_index(index_url, dist):
        raise ReleaseError(f"{dist} {version} is already on {index_url}: bump the version first")
    changelog_entry(name, version)
    out = out or Path(tempfile.mkdtemp(prefix=f"release-{name}-"))
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"--out {out} is not empty: build into a fresh folder")
    files = build(name, out)
    _run([*twine(), "check", "--strict", *map(str, files)], "twine check")
    if not dry_run:
        cmd = [*twine(), "upload", "--non-interactive", "--repository-url", repository_url]
        cmd += ["--username", username] if username else []
        cmd += ["--password", password] if password else []
        _run([*cmd, *map(str, files)], f"twine upload to {repository_url}")
    print(
        f"{dist} {version}: {'checked (dry run)' if dry_run else 'uploaded to ' + repository_url}"
        f" - {', '.join(p.name for p in files)}",
        flush=True,
    )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="release", description="Release one mugv package to a package index."
    )
    parser.add_argument("name", help=f"the package: one of {', '.join(ALL)}")
    parser.add_argument("--repository-url", required=True, help="twine's upload URL")
    parser.add_argument("--index-url", help="the index's simple page (default: URL/simple/)")
    parser.add_argument("--out", type=Path, help="an empty folder for the built files")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--dry-run", action="store_true", help="check and build, no upload")
    args = parser.parse_args(argv)

    def run() -> None:
        release(
            args.name,
            args.repository_url,
            index_url=args.index_url,
            out=args.out,
            username=args.username,
            password=args.password,
            dry_run=args.dry_run,
        )

    return run_command("release", args.name, run)


if __name__ == "__main__":
    sys.exit(main())
