"""Issue 23, curation (mugv-data): any file-name bytes, an HTML report with no live markup
from user strings, no source from an output of ours, and a declared range for every number
of the config."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import get_args

import annotated_types as at
import pyarrow.parquet as pq
import pytest
from hostile_util import clean_env
from mugv_data.cli import main as data_main
from mugv_data.config import CurateConfig, Frozen, RangeFilterConfig
from mugv_data.inputs import discover_inputs
from mugv_data.synth import scene, write_video
from mugv_formats import ClipDataset

FAST = [
    "--set",
    "filters.text.enabled=false",
    "--set",
    "split.min_clip_s=1.0",
    "--set",
    "dedup.enabled=false",
    "--engine",
    "sequential",
    "--no-progress",
]
EXTS = [".mp4", ".mkv"]


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("v") / "v.mp4"
    write_video(p, scene(40, seed=3))
    return p.read_bytes()


def _curate_cli(*args) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; arguments may be bytes (file names that are not UTF-8)."""
    cmd = [os.fsencode(sys.executable), b"-m", b"mugv_data.cli", b"curate"]
    cmd += [os.fsencode(a) for a in args]
    return subprocess.run(cmd, capture_output=True, timeout=300, env=clean_env())


# --- the HTML report -------------------------------------------------------------------------

#: What our report itself uses: any other tag or any event-handler attribute came from data.
OUR_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "b", "i", "br"}
OUR_TAGS |= {"table", "tr", "td", "div", "code", "small", "img", "svg", "text", "rect", "line"}
OUR_TAGS |= {"figure", "figcaption", "span"}  # histogram captions, override labels
HOSTILE_NAMES = [
    "<script>alert(1)<\\script>.mp4",
    "<img src=x onerror=alert(2)>.mp4",
    "q'><b onmouseover=alert(3)>.mp4",
    'dq"><svg onload=alert(4)>.mp4',
]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _text(page: str) -> str:
    p = _Tags()
    p.feed(page)
    return "".join(p.text)


def _live_markup(page: str) -> list:
    """Tags not of our report, event-handler attributes, and images not of our thumbs."""
    p = _Tags()
    p.feed(page)
    bad = []
    for tag, attrs in p.tags:
        if tag not in OUR_TAGS or any(a.startswith("on") for a in attrs):
            bad.append((tag, attrs))
        if tag == "img" and not str(attrs.get("src", "")).startswith("report/thumbs/"):
            bad.append((tag, attrs))
    return bad


def test_report_escapes_file_names_captions_and_reasons(tmp_path, video_bytes):
    d = tmp_path / "in"
    d.mkdir()
    for name in HOSTILE_NAMES:
        (d / name).write_bytes(video_bytes)
        # sidecar caption (captions.source=sidecar): markup in a caption
        (d / name).with_suffix(".txt").write_text("<script>alert('caption')</script> a cat")
    (d / "<script>zero.mp4").write_bytes(b"")  # a rejected file: its name and reason
    out = tmp_path / "clips"
    args = ["--input", d, "--output", out, *FAST, "--set", "captions.source=sidecar"]
    args += ["--set", "filters.sharpness.min=1e9"]  # every clip rejected too: reject cards
    args += ["--set", "filters.sharpness.max=2e9", "--set", "output.report_thumbnails=100"]
    r = _curate_cli(*args)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    page = (out / "report.html").read_text()
    for name in HOSTILE_NAMES:  # every source is in the report, as text
        assert name in _text(page)
    assert not _live_markup(page), _live_markup(page)
    # and with kept clips (caption cards), rebuilt by `mugv-data report`
    out2 = tmp_path / "clips2"
    r = _curate_cli(*args[:-6], "--output", out2, "--set", "output.report_thumbnails=100")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert "<script>alert('caption')</script>" in _text((out2 / "report.html").read_text())
    assert len(ClipDataset(out2).records()) == len(HOSTILE_NAMES)
    for page_path in (out2 / "report.html",):
        assert not _live_markup(page_path.read_text()), _live_markup(page_path.read_text())
    assert data_main(["report", str(out2)]) == 0
    assert not _live_markup((out2 / "report.html").read_text())


# --- any file-name bytes ---------------------------------------------------------------------

ODD_NAMES = [b"new\nline.mp4", b"tab\there.mp4", b"latin1-\xe9t\xe9.mp4", b"\xff\xfe raw.mp4"]


def test_file_names_with_newlines_tabs_and_non_utf8_bytes_are_curated(tmp_path, video_bytes):
    d = tmp_path / "in"
    d.mkdir()
    for name in ODD_NAMES:
        with open(os.fsencode(d) + b"/" + name, "wb") as f:
            f.write(video_bytes)
    with open(os.fsencode(d) + b"/\xff zero\n.mp4", "wb"):
        pass  # a rejected one: its name goes into rejects.parquet and the report
    out = tmp_path / "clips"
    r = _curate_cli("--input", d, "--output", out, *FAST)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    recs = ClipDataset(out).records()
    names = sorted(Path(rec.source).name for rec in recs)
    # valid UTF-8 names are kept exactly; other bytes appear as \xNN escapes
    assert names == sorted(
        ["new\nline.mp4", "tab\there.mp4", "latin1-\\xe9t\\xe9.mp4", "\\xff\\xfe raw.mp4"]
    )
    assert len({rec.key for rec in recs}) == len(ODD_NAMES)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [Path(x["source"]).name for x in rejects] == ["\\xff zero\n.mp4"]
    (out / "report.html").read_bytes().decode("utf-8")  # valid UTF-8
    json.loads((out / "summary.json").read_text())
    assert data_main(["inspect", str(out)]) == 0


def test_nul_separated_list_file_names_any_file(tmp_path, video_bytes):
    """A ``find -print0`` list (the only list that can hold a newline in a name)."""
    d = tmp_path / "in"
    d.mkdir()
    paths = [os.fsencode(d) + b"/" + n for n in ODD_NAMES]
    for p in paths:
        with open(p, "wb") as f:
            f.write(video_bytes)
    lst = tmp_path / "list0"
    lst.write_bytes(b"\0".join(paths) + b"\0")
    got = discover_inputs([f"@{lst}"], EXTS)
    assert sorted(os.fsencode(p) for p in got) == sorted(paths)
    # a line list with a non-UTF-8 name, relative to the list's folder
    (d / "names.lst").write_bytes(b"# comment\n\xff\xfe raw.mp4\n")
    assert [os.fsencode(p.name) for p in discover_inputs([str(d / "names.lst")], EXTS)] == [
        b"\xff\xfe raw.mp4"
    ]
    out = tmp_path / "clips"
    r = _curate_cli("--input", f"@{lst}", "--output", out, *FAST)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert len(ClipDataset(out).records()) == len(ODD_NAMES)


# --- no source from an output of ours --------------------------------------------------------


def test_outputs_of_ours_are_never_sources(tmp_path, video_bytes):
    """Staged clips of an interrupted curation, a finished dataset, and the run's own output
    (also reached through symbolic links) are not discovered as raw videos."""
    d = tmp_path / "in"
    (d / "real").mkdir(parents=True)
    (d / "real" / "a.mp4").write_bytes(video_bytes)
    # an interrupted curation inside the input: its staged clips
    staged = d / "old" / ".staging" / "clips"
    staged.mkdir(parents=True)
    (staged / "0123456789ab-0000.mp4").write_bytes(video_bytes)
    (d / "old" / "stray.mp4").write_bytes(video_bytes)
    # a dataset of ours (header names a mugv format) holding an mp4
    (d / "ds").mkdir()
    (d / "ds" / "dataset.json").write_text(json.dumps({"format": "mugv.clip-shards"}))
    (d / "ds" / "x.mp4").write_bytes(video_bytes)
    # a user's folder with a dataset.json of another tool: still a source folder
    (d / "other").mkdir()
    (d / "other" / "dataset.json").write_text(json.dumps({"format": "coco"}))
    (d / "other" / "b.mp4").write_bytes(video_bytes)
    # links into the outputs
    os.symlink(d / "old", d / "old-link")
    os.symlink(staged / "0123456789ab-0000.mp4", d / "staged-link.mp4")
    got = sorted(p.relative_to(d).as_posix() for p in discover_inputs([str(d)], EXTS))
    assert got == ["other/b.mp4", "real/a.mp4"]
    # the run's own output (no marker yet), by path and by a link to it
    (d / "out").mkdir()
    (d / "out" / "c.mp4").write_bytes(video_bytes)
    os.symlink(d / "out", tmp_path / "out-link")
    (d / "real" / "d.mp4").symlink_to(d / "out" / "c.mp4")
    got = discover_inputs([str(d)], EXTS, exclude=[tmp_path / "out-link"])
    assert sorted(p.relative_to(d).as_posix() for p in got) == ["other/b.mp4", "real/a.mp4"]
    # named explicitly or by a glob: still not a source
    got = discover_inputs([str(staged / "0123456789ab-0000.mp4"), str(d / "ds" / "*.mp4")], EXTS)
    assert got == [], f"outputs taken as sources: {got}"


def test_interrupted_curation_inside_its_input_does_not_curate_its_own_clips(tmp_path, video_bytes):
    """The run of the issue: a curation whose staged clips lie in its input folder (its
    output was there) rerun on another output: the staged clips are not sources."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.mp4").write_bytes(video_bytes)
    first = d / "clips"
    r = _curate_cli("--input", d / "a.mp4", "--output", first, *FAST)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    staged = first / ".staging" / "clips"
    staged.mkdir(parents=True, exist_ok=True)  # as an interrupted run leaves them
    (staged / "0123456789ab-0000.mp4").write_bytes(video_bytes)
    out = tmp_path / "clips"
    r = _curate_cli("--input", d, "--output", out, *FAST)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert sorted(Path(x.source).name for x in ClipDataset(out).records()) == ["a.mp4"]


# --- the config: every number has a declared range -------------------------------------------


def _numeric_fields(model: type[Frozen], prefix: str = ""):
    for name, f in model.model_fields.items():
        ann = f.annotation
        types = set(get_args(ann)) - {type(None)} or {ann}
        sub = [t for t in types if isinstance(t, type) and issubclass(t, Frozen)]
        if sub:
            yield from _numeric_fields(sub[0], f"{prefix}{name}.")
        elif types & {int, float}:
            yield f"{prefix}{name}", model, name, f


def _lower(f):
    for m in f.metadata:
        if isinstance(m, at.Ge):
            return m.ge, True
        if isinstance(m, at.Gt):
            return m.gt, False
    return None


NUMERIC = list(_numeric_fields(CurateConfig))


def test_every_numeric_config_field_declares_its_range():
    """Every int/float field has a lower bound; the range filters' min/max are checked
    against each other instead (any finite value is a meaningful threshold)."""
    assert len(NUMERIC) > 40
    loose = [
        key
        for key, model, name, f in NUMERIC
        if _lower(f) is None
        and not (issubclass(model, RangeFilterConfig) and name in ("min", "max"))
    ]
    assert not loose, f"numeric fields without a declared range: {loose}"


@pytest.mark.parametrize("key", [k for k, *_ in NUMERIC])
def test_out_of_range_and_non_finite_values_are_one_line_errors(key, tmp_path, capsys):
    f = next(f for k, _m, _n, f in NUMERIC if k == key)
    bad = ["nan", "inf", "-inf"]
    low = _lower(f)
    if low is not None:
        bound, inclusive = low
        bad.append(str(bound - 1 if inclusive else bound))
    for value in bad:
        args = ["curate", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
        assert data_main([*args, "--set", f"{key}={value}"]) == 2, f"{key}={value} accepted"
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and key.split(".")[-1] in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "key,value",
    [
        ("filters.sharpness.max", "100"),
        ("filters.brightness.min", "240"),
        ("filters.borders.min", "0.5"),
    ],
)
def test_range_filter_with_min_above_max_is_refused(key, value, tmp_path, capsys):
    args = ["curate", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    assert data_main([*args, "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "min=" in err and "max=" in err, err


# --- read-only output folders ----------------------------------------------------------------


def _as_unprivileged() -> list[str]:
    """A prefix that runs a command as ``nobody`` when we are root (root ignores modes)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file modes cannot be tested")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_tmp():
    """A temporary folder others may enter (pytest's own is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="mugv-ro-"))
    path.chmod(0o755)
    yield path
    for p in (path, *path.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.parametrize("where", ["below-read-only", "read-only-empty", "below-a-file"])
def test_unwritable_output_is_one_line_exit_2(where, open_tmp, video_bytes):
    tmp_path = open_tmp
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.mp4").write_bytes(video_bytes)
    d.chmod(0o755)
    (d / "a.mp4").chmod(0o644)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    ro.chmod(0o555)
    (tmp_path / "file").write_text("x")
    out = {
        "below-read-only": ro / "clips",
        "read-only-empty": ro,
        "below-a-file": tmp_path / "file" / "clips",
    }[where]
    cmd = [*_as_unprivileged(), sys.executable, "-m", "mugv_data.cli", "curate"]
    cmd += ["--input", str(d), "--output", str(out), *FAST]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=clean_env())
    err = r.stderr.strip()
    assert r.returncode == 2, err[-2000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(out) in err, err


def test_caption_table_matches_any_file_name_bytes(tmp_path, video_bytes):
    """A CSV caption table holding the file system's bytes (as the umbrella writes it)."""
    d = tmp_path / "in"
    d.mkdir()
    paths = [os.fsdecode(os.fsencode(d) + b"/" + n) for n in ODD_NAMES]
    for p in paths:
        with open(p, "wb") as f:
            f.write(video_bytes)
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["source", "caption"])
    w.writerows([p, f"caption {i}"] for i, p in enumerate(paths))
    (tmp_path / "captions.csv").write_bytes(table.getvalue().encode("utf-8", "surrogateescape"))
    out = tmp_path / "clips"
    r = _curate_cli(
        "--input", d, "--output", out, *FAST,
        "--set", "captions.source=table", "--set", f"captions.table_path={tmp_path / 'captions.csv'}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    caps = sorted(rec.caption for rec in ClipDataset(out).records())
    assert caps == [f"caption {i}" for i in range(len(paths))]
