"""Speed switches applied from outside the model: regional torch.compile of the blocks."""

from __future__ import annotations


def compile_blocks(transformer, mode: str | None = None) -> None:
    """``torch.compile`` each DiT block in place (same parameter names; every block has the
    same shapes, so one compiled graph serves all of them)."""
    for block in transformer.blocks:
        block.compile(mode=mode, dynamic=False)
