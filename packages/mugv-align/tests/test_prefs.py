"""make-prefs (human labels) and make-pairs (RDPO real-vs-generated) on latent shards."""

from __future__ import annotations

import json

import pytest
from mugv_align.cli import main
from mugv_align.prefs import make_prefs, make_real_pairs
from mugv_align_fixtures import make_task_latents
from mugv_formats import read_preference_data


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_task_latents(tmp_path_factory.mktemp("lat") / "lat", prompts=4)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pairs_from_csv_and_pass_fail_from_jsonl(latents, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("chosen,rejected,weight\ngood-000,bad-000,2\ngood-001,bad-001,\n")
    assert make_prefs(latents, csv, tmp_path / "p") == ("dpo", 2)
    header, items = read_preference_data(tmp_path / "p")
    assert header.kind == "dpo" and [i.weight for i in items] == [2.0, 1.0]
    assert items[0].caption == "prompt 0"
    rows = [{"key": "good-000", "label": "pass"}, {"key": "bad-000", "desirable": False}]
    assert make_prefs(latents, _jsonl(tmp_path / "k.jsonl", rows), tmp_path / "k") == ("kto", 2)
    _, items = read_preference_data(tmp_path / "k")
    assert [i.desirable for i in items] == [True, False]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"chosen": "good-000", "rejected": "nope"}], "'nope' not in"),
        ([{"chosen": "good-000", "rejected": "good-000"}], "self-pair"),
        ([{"chosen": "good-000", "rejected": "bad-000"}] * 2, "row 2: duplicate of row 1"),
        ([{"chosen": "good-000", "rejected": "bad-000", "score": 3}], "unknown columns"),
        ([{"key": "good-000", "label": "maybe"}], "not pass/fail"),
        ([{"key": "good-000", "label": "pass"}, {"key": "good-000", "label": "fail"}], "duplicate"),
    ],
)
def test_label_errors_name_the_row(latents, tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        make_prefs(latents, _jsonl(tmp_path / "l.jsonl", rows), tmp_path / "out")


def test_cli_user_error_is_one_line_and_exit_2(latents, tmp_path, capsys):
    rows = [{"chosen": "good-000", "rejected": "good-000"}]
    code = main(
        [
            "make-prefs",
            "--latents",
            str(latents),
            "--labels",
            str(_jsonl(tmp_path / "l.jsonl", rows)),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "self-pair" in err
    assert (
        main(
            [
                "ema-reconstruct",
                "--run",
                str(tmp_path),
                "--sigma-rel",
                "0.1",
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "not a mugv-align run" in capsys.readouterr().err


def test_real_vs_generated_pairs(latents, tmp_path):
    """Generated samples of 2 captions (one with a shape no real clip has) pair against the
    real clips of the same caption; the merged latent set holds both."""
    gen = make_task_latents(tmp_path / "gen", prompts=2, seed=9)
    assert make_real_pairs(latents, gen, tmp_path / "rdpo") == 4
    header, items = read_preference_data(tmp_path / "rdpo" / "prefs")
    assert header.latent_dataset == "../latents"
    assert {(i.chosen, i.rejected) for i in items} == {
        (f"real-{k}-00{p}", f"gen-{g}-00{p}")
        for p in (0, 1)
        for g in ("good", "bad")
        for k in ("good",)
    }
    other = make_task_latents(tmp_path / "other", prompts=1, seed=3, start=50)
    with pytest.raises(ValueError, match="shares a caption"):
        make_real_pairs(latents, other, tmp_path / "none")
