"""Vision towers."""

from mmjax.encoders.vit import VisionConfig, VisionTransformer

__all__ = ["VisionConfig", "VisionTransformer"]
