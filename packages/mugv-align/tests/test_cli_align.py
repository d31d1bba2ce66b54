from __future__ import annotations

import pytest
from mugv_align import __version__
from mugv_align.cli import main


def test_version_flag_prints_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mugv-align {__version__}"


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_config_errors_are_one_line_naming_file_field_value(tmp_path, capsys) -> None:
    from mugv_align.config import load_align_config

    path = tmp_path / "run.yaml"
    path.write_text(
        "preset: debug\nalign:\n  preference: [{path: a, weight: 1}, {path: b, weight: 1}]\n"
    )
    cfg = load_align_config(path, ["align.preference.1.weight=3", "align.beta=7"])
    assert [p.weight for p in cfg.align.preference] == [1, 3] and cfg.align.beta == 7
    assert main(["sft", str(path), "--set", "align.preference.1.wieght=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any library warnings
    assert err.startswith("mugv-align sft: error: config file ") and str(path) in err
    assert "align.preference.1.wieght = 3: Extra inputs are not permitted" in err
