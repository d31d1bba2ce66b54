"""Pipeline config: packaged defaults, YAML file, --set overrides, one-line errors."""

from __future__ import annotations

import pytest
import yaml
from mugv.cli import main
from mugv.config import load_config


def test_defaults_file_and_overrides(tmp_path):
    cfg = load_config()
    assert cfg.run_dir == "runs/demo" and cfg.vae.config["model"]["preset"] == "tiny"
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"run_dir": "x", "dit": {"config": {"preset": "debug"}}}))
    cfg = load_config(
        f,
        [
            "generate.steps=3",
            "dit.config.train.seed=7",
            "curate.inputs=[a, b]",
            "dit.config.curriculum.1.steps=9",
        ],
    )
    assert cfg.dit.config["curriculum"][1]["steps"] == 9
    assert cfg.run_dir == "x" and cfg.generate.steps == 3 and cfg.curate.inputs == ["a", "b"]
    assert cfg.dit.config["train"]["seed"] == 7
    # the file merges into the defaults section by section: other dit fields stay
    assert cfg.dit.config["curriculum"][0] == load_config().dit.config["curriculum"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.yaml"], "config file missing.yaml does not exist"),
        (["run", "--set", "generate.stepz=3"], "stepz"),
        (["run", "--set", "generate"], "must look like key.path=value"),
        (["run", "--set", "dit.config.curriculum.5.steps=1"], "is not an index of a 2-item list"),
        (["demo", "--no-samples"], "no video files"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"mugv {args[0]}: error:")
    assert err.count("\n") == 1
