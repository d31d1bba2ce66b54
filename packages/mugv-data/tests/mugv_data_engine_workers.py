"""Worker builders for the engine tests, in a module of their own: a spawned pool process
imports a worker's builder by module name, and in the whole suite's run a test file's module
name is not importable there (``packages`` is not a package)."""

from __future__ import annotations


def build_square(config):
    return lambda u: u * u
