"""The ``mugv eval`` command family: one subcommand per module of this package.

    mugv eval vae CHECKPOINT [--clips SET] [--resolutions 256p 480p 720p] [--output DIR]
    mugv eval generation --generated DIR [--reference DIR --i3d-weights F]
                         [--clip-weights F --prompts F] [--vbench-models DIR ...] [--output DIR]
    mugv eval watch RUN --vae DIR --text-encoder DIR [--once] [--interval S]

Each subcommand lives in a module of its own listed in ``SUBCOMMANDS``; the module defines
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Its import must stay
light (heavy imports inside ``run``) so that ``mugv --help`` stays fast. To add a subcommand,
write its module and add one line here.
"""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS: dict[str, str] = {  # name -> module
    "vae": "mugv.evaluation.vae",
    "generation": "mugv.evaluation.generation",
    "watch": "mugv.evaluation.watch",
}


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` and its subcommands to the ``mugv`` parser's subcommands."""
    e = sub.add_parser("eval", help="judge a run: render its samples, score a VAE or generator")
    eval_sub = e.add_subparsers(dest="eval_command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = eval_sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(eval_run=module.run)


def run_eval(args: argparse.Namespace) -> int:
    """Run the chosen ``mugv eval`` subcommand."""
    return args.eval_run(args)
