"""Plain-PyTorch MUG-DiT for inference."""

from mugv_kernels.rope import MAX_FRAME_INDEX, default_frame_index

from mugv_infer.models.transformer import MUGDiTOutput, MUGDiTTransformer3DModel

__all__ = ["MAX_FRAME_INDEX", "MUGDiTOutput", "MUGDiTTransformer3DModel", "default_frame_index"]
