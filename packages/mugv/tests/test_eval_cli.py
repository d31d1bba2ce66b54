"""The ``mugv eval`` command family: subcommands registered by module, errors on one line."""

from __future__ import annotations

import sys
import types

from mugv import cli
from mugv.evaluation import cli as eval_cli


def _fake_module(monkeypatch, calls):
    m = types.ModuleType("mugv_test_fake_eval")
    m.HELP = "a fake subcommand"

    def add_arguments(p):
        p.add_argument("path")

    def run(args):
        calls.append(args.path)
        if args.path == "bad":
            raise ValueError("bad path: 'bad'")
        return 0

    m.add_arguments, m.run = add_arguments, run
    monkeypatch.setitem(sys.modules, m.__name__, m)
    monkeypatch.setitem(eval_cli.SUBCOMMANDS, "fake", m.__name__)


def test_eval_subcommand_dispatch_and_user_error(monkeypatch, capsys):
    calls = []
    _fake_module(monkeypatch, calls)
    assert cli.main(["eval", "fake", "here"]) == 0
    assert cli.main(["eval", "fake", "bad"]) == 2
    assert calls == ["here", "bad"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mugv eval fake: error: bad path: 'bad'"]
