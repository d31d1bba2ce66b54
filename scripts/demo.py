#!/usr/bin/env python3
"""Old entry point of the main job, kept for existing instructions: ``mugv demo`` replaced it.

``python scripts/demo.py [--output DIR] [ARGS...]`` is ``mugv demo [--run-dir DIR] [ARGS...]``
(packages/mugv: the tiny pipeline curate -> VAE -> latents -> DiT -> SFT/DPO -> generate ->
``DIR/report.html``; default ``runs/demo``).
"""

from __future__ import annotations

import sys

from mugv.cli import main

if __name__ == "__main__":
    argv = ["--run-dir" if a == "--output" else a for a in sys.argv[1:]]
    sys.exit(main(["demo", *argv]))
