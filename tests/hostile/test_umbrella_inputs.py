"""The umbrella's own handling of user-controlled values (issue 23): numeric config ranges,
source file names of any shape, and a report that holds every user string as text."""

from __future__ import annotations

import pytest
from mugv import cli
from mugv.config import load_config

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
