"""The optimizer: Megatron's (distributed) Adam and its learning-rate schedule
(:mod:`.optimizer`), torch's fused AdamW inside it (:mod:`.fused_adam`) and the sync-free step
that wraps it (:mod:`.sync_free_step`), and the fp32 master weights it updates, which every EMA
averages, with the policy's dtype rule (:mod:`.master`)."""
