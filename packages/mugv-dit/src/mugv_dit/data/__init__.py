"""Training data from mugv latent shards: the default ``plan`` loader (:mod:`.plan`: latent
index, buckets, token-budget step plans) and the ``energon`` loader (:mod:`.energon`,
``mugv-dit[energon]``)."""
