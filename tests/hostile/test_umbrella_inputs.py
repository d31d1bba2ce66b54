"""The umbrella's own handling of user-controlled values (issue 23): numeric config ranges,
source file names of any shape, and a report that holds every user string as text."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mugv import cli
from mugv.config import load_config
from mugv.layout import RunLayout
from mugv.report import safe_name, write_report

# every numeric field of mugv's pipeline config, with values outside its range
OUT_OF_RANGE = [
    ("threads", [0, -1, 100000]),
    ("vae.recon_frames", [0, -7, 16, 10**6]),
    ("vae.recon_resolution", ["0x64", "63x64", "64", "-64x64", "99999x64", "axb"]),
    ("encode.frames", [0, 8, -1]),
    ("encode.resolution", ["64x0", "65x65", "x"]),
    ("align.sample_steps", [0, -3, 10**9]),
    ("align.sample_seed", [-1, 2**64]),
    ("generate.steps", [0, -1]),
    ("generate.guidance_scale", [0.5, -1.0, ".inf", ".nan", 1e9]),
    ("generate.seed", [-5, 2**64]),
    ("generate.max_prompts", [0, -1]),
    ("memorise.steps", [0, -10]),
    ("memorise.lr", [0.0, -1e-3, ".inf", ".nan", 10.0]),
    ("memorise.sample_steps", [0]),
]


@pytest.mark.parametrize(("key", "values"), OUT_OF_RANGE, ids=[k for k, _ in OUT_OF_RANGE])
def test_out_of_range_config_values_are_one_line_errors(key, values, capsys, tmp_path):
    for value in values:
        with pytest.raises(ValueError, match=key.split(".")[-1]):
            load_config(None, [f"{key}={value}"])
        run_dir = tmp_path / "never"
        code = cli.main(["demo", "--run-dir", str(run_dir), "--set", f"{key}={value}"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (value, err)
        assert err.startswith(f"mugv demo: error: config: {key} = "), err
        assert not run_dir.exists()


def test_the_demo_defaults_and_edge_values_are_accepted():
    cfg = load_config(
        None,
        ["threads=1", "vae.recon_frames=1", "encode.frames=9", "encode.resolution=8x4096",
         "generate.guidance_scale=1.0", "generate.seed=0", "memorise.lr=1.0"],
    )  # fmt: skip
    assert cfg.encode.resolution == "8x4096" and cfg.vae.recon_frames == 1
    assert load_config(None, []).encode.frames == 17


EVIL = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "x' onmouseover='alert(3)",
    "</i></td><svg onload=alert(4)>",
]


class _Tags(HTMLParser):
    """Every start tag and its attributes, and the page's text, as a browser parses them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def _hostile_run(root: Path) -> RunLayout:
    """A finished run folder whose every user-controlled string is markup."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mugv_formats import ClipRecord, ClipShardWriter

    run = RunLayout(root)
    evil_name = f"/videos/{EVIL[0]}{EVIL[1]}.mp4"
    with ClipShardWriter(run.clips, producer="hostile") as w:
        rec = ClipRecord(key="k0", source=evil_name, start_s=0, end_s=1, fps=8, num_frames=8,
                         width=8, height=8, caption=EVIL[1] + EVIL[3], scores={"motion": 1.0})  # fmt: skip
        w.write(rec, b"not a video")
    (run.clips / "summary.json").write_text(json.dumps(
        {"sources": EVIL[0], "clips_seen": EVIL[1], "clips_kept": 1,
         "rejects_by_stage": {EVIL[0]: EVIL[2]}}))  # fmt: skip
    reject_key = 'r1" onerror="alert(5)'
    thumbs = run.clips / "report" / "thumbs"
    thumbs.mkdir(parents=True)
    (thumbs / f"{reject_key}.jpg").write_bytes(b"jpg")
    (thumbs / "k0.jpg").write_bytes(b"jpg")
    pq.write_table(pa.Table.from_pylist([{"key": reject_key, "source": evil_name,
                                          "stage": EVIL[3], "reason": EVIL[1]}]),
                   run.clips / "rejects.parquet")  # fmt: skip
    run.recon.mkdir()
    (run.recon_table).write_text(json.dumps({"resolution": EVIL[0], "clips": [
        {"key": reject_key, "caption": EVIL[0], "psnr": 20.0}]}))  # fmt: skip
    for name in run.recon_pair(reject_key):
        (run.recon / name).write_bytes(b"mp4")
    run.prompts.write_text(json.dumps([EVIL[0], EVIL[1]]))
    run.videos.mkdir()
    run.t2v.write_bytes(b"mp4")
    run.i2v.write_bytes(b"mp4")
    run.memorise.mkdir()
    run.memorise_result.write_text(json.dumps(
        {"clip": EVIL[1], "caption": EVIL[0], "steps": EVIL[2], "sample_steps": EVIL[3],
         "trained_rel_error": 0.1, "untrained_rel_error": 1.0, "mse_to_target": 0.1,
         "mse_to_nearest_other": None}))  # fmt: skip
    run.done.mkdir(parents=True)
    run.marker("curate").write_text(json.dumps(
        {"key": "k", "seconds": 1.0, "finished": EVIL[1],
         "steps": [{"title": EVIL[0], "seconds": 0.5}]}))  # fmt: skip
    return run


def test_the_report_holds_every_user_string_as_text(tmp_path):
    run = _hostile_run(tmp_path / "run")
    write_report(run)
    page = _Tags()
    page.feed(run.report.read_text())
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "section",
               "code", "table", "tr", "th", "td", "b", "i", "br", "div", "img", "video", "a",
               "span", "svg", "text", "line", "polyline"}  # fmt: skip
    for tag, attrs in page.tags:
        assert tag in allowed, f"live <{tag}> in the report"
        assert not [a for a in attrs if a.startswith("on")], f"live handler on <{tag}>: {attrs}"
        for a in ("src", "href"):
            if a in attrs:  # relative, inside the report: no scheme, no way up
                v = attrs[a]
                assert ":" not in v and ".." not in v and not v.startswith("/"), v
    text = "".join(page.text)
    for s in EVIL:  # shown, as text
        assert s in text
    # the assets stay inside RUN/report, under safe names
    for p in run.report_assets.rglob("*"):
        assert re.fullmatch(r"[A-Za-z0-9._/-]+", p.relative_to(run.report_assets).as_posix())


def test_asset_names_are_safe_and_distinct():
    names = ['a" onerror="x.jpg', "a_ onerror__x.jpg", "../../etc/passwd", "k0.jpg", "..", ""]
    safe = [safe_name(n) for n in names]
    assert safe[3] == "k0.jpg" and len(set(safe)) == len(safe)
    assert all(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._/-]*", s) for s in safe), safe
    assert all(".." not in s.split("/") for s in safe)


def test_any_source_file_name_passes_the_curate_stage_inputs(tmp_path):
    """Names with a newline, a carriage return, a tab, quotes, a leading dash and bytes that are
    not UTF-8: the umbrella's input list (read back by mugv-data's own reader) and caption table
    (read by the csv module) name exactly these files."""
    import csv
    import io
    import os

    from mugv.stages import caption_for, write_curate_inputs
    from mugv_data.inputs import discover_inputs

    src = tmp_path / "videos"
    src.mkdir()
    names = ["a\nb.mp4", "c\rd.mp4", "tab\there.mov", '"q",x.mp4', "-dash.mp4", "plain.mp4",
             os.fsdecode(b"caf\xe9.mp4"), "no-suffix", "odd.s\nfx"]  # fmt: skip
    videos = []
    for n in names:
        p = src / n
        p.write_bytes(b"video")
        videos.append(p)
    captions = {v: caption_for(v, {"plain.mp4": "line one\nline two"}) for v in videos}
    run = RunLayout(tmp_path / "run")
    write_curate_inputs(run, videos, captions, {"dedup": {"enabled": False}})

    listed = discover_inputs([f"@{run.curate_inputs}"], [".mp4"])
    assert sorted(map(os.fsencode, listed)) == sorted(os.fsencode(v.resolve()) for v in videos)
    text = run.curate_captions.read_bytes().decode("utf-8", "surrogateescape")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["source", "caption"]
    assert sorted(map(tuple, rows[1:])) == sorted((str(v), captions[v]) for v in videos)
    # every line of the list is one plain path inside the run folder
    for line in run.curate_inputs.read_text().splitlines():
        assert re.fullmatch(r"[A-Za-z0-9/._+-]+", line) and line.startswith(str(run.root)), line
