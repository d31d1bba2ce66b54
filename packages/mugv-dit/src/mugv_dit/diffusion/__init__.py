"""Rectified-flow objective of MUG-DiT as pure functions."""
