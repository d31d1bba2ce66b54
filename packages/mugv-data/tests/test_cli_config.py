"""mugv-data's config loading is mugv_formats.config_loading: flags, --set with list indices,
one-line errors naming file, field and value (exit 2)."""

from __future__ import annotations

from mugv_data.cli import main
from mugv_data.config import load_config


def test_file_flags_and_set_with_list_indices(tmp_path):
    path = tmp_path / "curate.yaml"
    path.write_text(
        "input: {paths: [a.mp4, b.mp4], extensions: [.mp4, .mov]}\n"
        "output: {path: from_file}\nfilters: {motion: {min: 0.1}}\n"
    )
    cfg = load_config(path, overrides=["input.extensions.1=.webm", "filters.motion.min=0.5"])
    assert cfg.input.paths == ["a.mp4", "b.mp4"] and cfg.input.extensions == [".mp4", ".webm"]
    assert cfg.filters.motion.min == 0.5 and cfg.output.path == "from_file"
    cfg = load_config(path, inputs=["c.mp4"], output=str(tmp_path / "o"))
    assert cfg.input.paths == ["c.mp4"] and cfg.output.path == str(tmp_path / "o")
    cfg = load_config(path, inputs=["c.mp4"], overrides=["input.paths.0=d.mp4"])
    assert cfg.input.paths == ["d.mp4"]  # --set beats the flags


def test_cli_config_errors_are_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "curate.yaml"
    path.write_text("filters: {motion: {min: fast}}\n")
    assert main(["curate", str(path), "--input", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mugv-data curate: error: config file")
    assert str(path) in err and "filters.motion.min = 'fast'" in err
    path.write_text("filters: [\n")
    assert main(["curate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not valid YAML" in err
