"""scripts/release.py's checks that need no build or index process (fast): the changelog
section, reading an index's simple page, and the command's one-line errors. The whole release
against a local pypiserver is tests/test_release_publish.py (slow)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import release
import release_check


def test_every_package_has_a_changelog_section_for_its_version() -> None:
    for name in release_check.ALL:
        version = release.read_version(name)
        assert release.changelog_entry(name, version)  # non-empty text


def test_a_missing_or_empty_changelog_section_is_refused(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "packages" / "mugv-formats"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(release_check, "ROOT", tmp_path)
    monkeypatch.setattr(release, "ROOT", tmp_path)
    with pytest.raises(release.ReleaseError, match="no changelog"):
        release.changelog_entry("formats", "1.2.0")
    (pkg / "CHANGELOG.md").write_text("# Changelog\n\n## 1.2.0 (unreleased)\n\n## 1.1.0\n\n- x\n")
    with pytest.raises(release.ReleaseError, match=r"the '## 1.2.0' section is empty"):
        release.changelog_entry("formats", "1.2.0")
    with pytest.raises(release.ReleaseError, match=r"no '## 1.2' section"):
        release.changelog_entry("formats", "1.2")  # a prefix of 1.2.0 is not its section
    assert release.changelog_entry("formats", "1.1.0") == "- x"


# A PEP 503 page as indexes serve it: links with hash fragments, other projects' look-alikes.
SIMPLE_PAGE = """<!DOCTYPE html><html><body><h1>Links for mugv-formats</h1>
<a href="../../packages/mugv_formats-1.0.0-py3-none-any.whl#sha256=ab">mugv_formats-1.0.0-py3-none-any.whl</a>
<a href="/packages/mugv_formats-1.0.0.tar.gz#sha256=cd">mugv_formats-1.0.0.tar.gz</a>
<a href="https://files.example/mugv-formats-1.1.0rc1.tar.gz">mugv-formats-1.1.0rc1.tar.gz</a>
<a href="/packages/mugv_formats_extra-9.0.0-py3-none-any.whl">mugv_formats_extra-9.0.0</a>
</body></html>"""


@pytest.fixture
def simple_index() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/simple/mugv-formats/":
                body = SIMPLE_PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404 if self.path.startswith("/simple/") else 500)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_versions_on_index_reads_a_simple_page(simple_index: str) -> None:
    assert release.versions_on_index(simple_index + "simple/", "mugv_formats") == {
        "1.0.0",
        "1.1.0rc1",
    }
    assert release.versions_on_index(simple_index + "simple/", "mugv-vae") == set()  # 404
    with pytest.raises(release.ReleaseError, match="HTTP 500"):
        release.versions_on_index(simple_index + "other/", "mugv-vae")


def test_the_command_reports_a_failed_check_on_one_line(simple_index: str, capsys) -> None:
    assert release.main(["nonsense", "--repository-url", simple_index]) == 2
    err = capsys.readouterr().err
    assert err.startswith("release nonsense: error: unknown package 'nonsense'")
    assert err.count("\n") == 1


def test_an_unreachable_index_stops_the_release_before_the_build(tmp_path: Path) -> None:
    with pytest.raises(release.ReleaseError, match="cannot be read"):
        release.release("formats", "http://127.0.0.1:9/", out=tmp_path / "dist")
    assert not (tmp_path / "dist").exists()
