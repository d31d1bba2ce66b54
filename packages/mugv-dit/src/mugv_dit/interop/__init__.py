"""Weights in and out of training: ``mugv.dit-export`` folders (:mod:`.export`), the original
release's ``dit.pt`` (:mod:`.original`) and x2 width expansion of an export (:mod:`.expansion`)."""
