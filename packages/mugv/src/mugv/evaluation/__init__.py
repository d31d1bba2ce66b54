"""``mugv eval``: commands that judge a run (see :mod:`mugv.evaluation.cli`)."""
