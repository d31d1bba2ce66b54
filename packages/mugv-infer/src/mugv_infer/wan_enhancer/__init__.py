"""The MUG-V release's enhancer, built from diffusers parts.

The release refines a generated video with a Wan2.1-1.3B DiT (diffusers
``WanTransformer3DModel``) that sees the noisy latents and, through a second patch embedding,
the clean ones; the first latent frame is held clean and modulated at t = 0. Its VAE is the
Wan VAE (``AutoencoderKLWan``), its text encoder umT5-XXL (``UMT5EncoderModel``), and a
rank-256 LoRA on the attention projections (q, k, v, o) and the FFN is loaded through peft.
One SDEdit step from s = 0.3 with CFG 2.

Modules: :mod:`.transformer` (the folded 32-channel patch embedding, the frame-wise
timestep forward), :mod:`.convert` (the released files' keys -> diffusers / transformers
names), :mod:`.pipeline` (``WanEnhancePipeline``).
"""
