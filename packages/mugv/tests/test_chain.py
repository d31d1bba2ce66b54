"""``mugv.tools chain``: pipeline commands one after another in one process, each through its
own entry point, with the exit status of the first that fails (issue 25: the imports they
share are paid once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from mugv import chain as chain_module
from mugv.chain import chain, run_in_process
from mugv.runner import script
from mugv.stages import in_one_process, step_commands, tool


def _fake_scripts(monkeypatch, **mains):
    """Console scripts NAME -> main, found by run_in_process as installed entry points."""

    def entry_points(*, group, name):
        assert group == "console_scripts"
        return [SimpleNamespace(load=lambda: mains[name])] if name in mains else []

    monkeypatch.setattr(chain_module, "entry_points", entry_points)


def test_a_console_script_runs_with_its_argv_and_leaves_env_and_argv_as_they_were(monkeypatch):
    seen = []

    def main():  # as a trainer does: its one-process group's variables
        seen.append(list(sys.argv))
        os.environ["MASTER_PORT"] = "12345"
        return 0

    def fails():
        os.environ["RANK"] = "0"
        sys.exit(3)

    _fake_scripts(monkeypatch, **{"mugv-x": main, "mugv-y": fails})
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    argv = list(sys.argv)
    assert run_in_process(["/venv/bin/mugv-x", "train", "a b.yaml"]) == 0
    assert seen == [["/venv/bin/mugv-x", "train", "a b.yaml"]]
    assert run_in_process(["/venv/bin/mugv-y"]) == 3
    assert "MASTER_PORT" not in os.environ and "RANK" not in os.environ and sys.argv == argv
    with pytest.raises(ValueError, match="mugv-nothing: not a console script"):
        run_in_process(["/venv/bin/mugv-nothing"])


def test_the_chain_stops_at_the_first_failure_with_its_status(monkeypatch, capsys):
    ran = []
    _fake_scripts(
        monkeypatch,
        **{
            "a": lambda: ran.append("a"),
            "b": lambda: sys.exit("b: error: bad value"),
            "c": lambda: ran.append("c"),
        },
    )
    assert chain([["/x/a"], ["/x/a", "--again"]]) == 0
    assert chain([["/x/a"], ["/x/b"], ["/x/c"]]) == 1  # SystemExit("message"): status 1
    assert ran == ["a", "a", "a"]
    out, err = capsys.readouterr()
    assert "$ /x/a --again" in out and "$ /x/c" not in out
    assert "b: error: bad value" in err and "chain: b failed (exit 1)" in err


def test_real_commands_in_one_child_process(tmp_path):
    """A real console script (its argparse exit status) and a mugv.tools command, through
    ``python -m mugv.tools chain`` as the pipeline runs it; a failure stops the chain."""
    from mugv.tools import main

    latents = tmp_path / "latents"
    _tiny_latents(latents)
    prompts = tmp_path / "prompts.json"
    ok = in_one_process(
        [script("mugv-formats"), "--version"],
        tool("prompts", "--latents", str(latents), "--out", str(prompts)),
    )
    assert step_commands(SimpleNamespace(cmd=ok))[1][3] == "prompts"
    res = subprocess.run(ok, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(prompts.read_text()) == ["a red ball"]
    assert res.stdout.count("$ ") == 2

    prompts.unlink()
    bad = in_one_process([script("mugv-formats"), "--no-such-flag"], ok)
    res = subprocess.run(bad, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and not prompts.exists()
    assert "mugv.tools chain: mugv-formats failed (exit 2)" in res.stderr
    with pytest.raises(SystemExit):  # not a list of argument lists
        main(["chain", json.dumps(["mugv-formats", "--version"])])


def _tiny_latents(path):
    import numpy as np
    from mugv_formats import LatentRecord, LatentShardWriter

    header = LatentShardWriter.make_header(
        producer="test", vae_checkpoint_id="v", latent_channels=2, latent_mean=[0.0, 0.0],
        latent_std=[1.0, 1.0],
    )  # fmt: skip
    with LatentShardWriter(path, header, energon=False) as w:
        rec = LatentRecord(key="k0", caption="a red ball", fps=8.0, num_frames=1, height=8, width=8)
        w.write(rec, np.zeros((2, 1, 1, 1), np.float16))
