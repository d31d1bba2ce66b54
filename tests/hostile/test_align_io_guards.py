"""mugv-align's inputs and outputs under attack (issue 23): every numeric setting range-checked,
writers that never replace what they did not write nor merge into an existing dataset,
make-prefs' malformed rows named by file, line and field, one run per output folder."""

from __future__ import annotations

import pytest
import yaml
from hostile_util import make_latents, numeric_fields_without_range

pytest.importorskip("megatron.core")


def align_config(tmp, name: str = "run", **align) -> object:
    raw = {
        "preset": "debug",
        "model": {"text_dim": 32},
        "data": {"path": str(tmp / "unused"), "tokens_per_batch": 64},
        "train": {"progress": False, "init_from": str(tmp / "unused-export")},
        "align": {"preference": [{"path": str(tmp / "unused-prefs")}], **align},
        "curriculum": [{"name": "a", "steps": 2, "lr": 1e-4}],
        "output_dir": str(tmp / name),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_numeric_align_config_field_declares_its_range():
    from mugv_align.config import AlignRunConfig

    assert numeric_fields_without_range(AlignRunConfig) == []


@pytest.mark.parametrize(
    "setting",
    [
        "align.beta=0",
        "align.beta=inf",
        "align.sft_weight=-0.1",
        "align.desirable_weight=-1",
        "align.undesirable_weight=nan",
        "align.items_per_micro_batch=0",
        "align.ema_sigma_rels=[0.05, 0.3]",
        "align.ema_sigma_rels=[0.0]",
        "align.ema_snapshot_every=-1",
        "align.console_every=-1",
        "train.adam_beta1=1.5",
        "curriculum.0.lr=-1",
        "curriculum.0.warmup_steps=-3",
    ],
)
@pytest.mark.parametrize("command", ["sft", "dpo", "kto"])
def test_out_of_range_setting_is_one_line_exit_2(tmp_path, capsys, command, setting):
    """Item 5 for mugv-align: an out-of-range value given with --set stops the command
    before any work, one line naming the field, exit 2."""
    from mugv_align.cli import main

    assert main([command, str(align_config(tmp_path)), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    field = setting.split("=")[0].rsplit(".", 1)[-1]
    assert len(err.splitlines()) == 1 and field in err, err
    assert not (tmp_path / "run").exists()


# -- item 2: make-prefs writes new preference sets only ---------------------------------------
def _labels(path, text: str):
    path.write_text(text)
    return path


def _make_prefs(*args) -> tuple[int, str]:
    import contextlib
    import io

    from mugv_align.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["make-prefs", *map(str, args)])
    return code, err.getvalue().strip()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("chosen,rejected\ns0000,s0001,s0002\n", "line 2: 1 field(s) beyond"),
        ("chosen,rejected,weight\ns0000,s0001\n", "line 2: field 'weight' missing"),
        ("chosen,rejected,weight\ns0000,s0001,heavy\n", "line 2, row 1: field 'weight'"),
        ('chosen,rejected\ns0000,s0001\n"s0002\n', "line 3"),
        ("chosen,rejected\ns0000,\xff\n", "not UTF-8"),
    ],
    ids=["extra-field", "short-row", "bad-number", "open-quote", "not-utf8"],
)
def test_malformed_csv_row_is_one_line_naming_file_and_line(tmp_path, text, match):
    """A malformed CSV row of make-prefs is one line naming the file, the line and the field
    (an extra field used to be a TypeError traceback, a bad weight an unnamed float error)."""
    lat = make_latents(tmp_path / "lat")
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    code, err = _make_prefs("--latents", lat, "--labels", path, "--output", tmp_path / "p")
    assert code == 2 and len(err.splitlines()) == 1 and "labels.csv" in err, err
    assert match in err, err
    assert not (tmp_path / "p").exists() or not (tmp_path / "p" / "dataset.json").exists()


def test_generated_preferences_never_merge_into_a_training_set(tmp_path):
    """Medium 1: make-prefs into an existing latent dataset (a training set) is refused
    whatever the flags; the dataset is unchanged."""
    import hashlib

    lat = make_latents(tmp_path / "lat")
    other = make_latents(tmp_path / "train-set")

    def digest(folder):
        return {
            p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    before = digest(other)
    labels = _labels(tmp_path / "l.csv", "chosen,rejected\ns0000,s0001\n")
    for flags in ([], ["--overwrite"], ["--append"]):
        code, err = _make_prefs("--latents", lat, "--labels", labels, "--output", other, *flags)
        assert code == 2 and len(err.splitlines()) == 1 and str(other) in err, (flags, err)
    assert digest(other) == before
    # the latent set itself, or a folder inside it
    for out in (lat, lat / "prefs"):
        code, err = _make_prefs("--latents", lat, "--labels", labels, "--output", out)
        assert code == 2 and "input" in err, err


def test_make_prefs_replaces_only_its_own_kind_and_appends_compatibly(tmp_path):
    from mugv_formats import read_preference_data

    lat = make_latents(tmp_path / "lat")
    out = tmp_path / "prefs"
    first = _labels(tmp_path / "a.csv", "chosen,rejected\ns0000,s0001\n")
    second = _labels(tmp_path / "b.csv", "chosen,rejected\ns0002,s0003\n")
    assert _make_prefs("--latents", lat, "--labels", first, "--output", out)[0] == 0
    code, err = _make_prefs("--latents", lat, "--labels", second, "--output", out)
    assert code == 2 and "--overwrite" in err  # a complete set: not silently replaced
    assert _make_prefs("--latents", lat, "--labels", second, "--output", out, "--append")[0] == 0
    items = read_preference_data(out)[1]
    assert [(i.chosen, i.rejected) for i in items] == [("s0000", "s0001"), ("s0002", "s0003")]
    code, err = _make_prefs("--latents", lat, "--labels", first, "--output", out, "--append")
    assert code == 2 and "duplicate" in err  # the same pair twice
    kto = _labels(tmp_path / "k.csv", "key,label\ns0004,pass\n")
    code, err = _make_prefs("--latents", lat, "--labels", kto, "--output", out, "--append")
    assert code == 2 and "dpo items" in err
    other = make_latents(tmp_path / "other")
    code, err = _make_prefs("--latents", other, "--labels", second, "--output", out, "--append")
    assert code == 2 and "another latent set" in err
    assert _make_prefs("--latents", lat, "--labels", first, "--output", out, "--overwrite")[0] == 0
    assert len(read_preference_data(out)[1]) == 1
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    code, err = _make_prefs("--latents", lat, "--labels", first, "--output", user, "--overwrite")
    assert code == 2 and "notes.txt" in err and (user / "notes.txt").exists()
