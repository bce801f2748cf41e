"""Model families: which encoder, connector and decoder, and how features meet text."""

from mmjax.models.llava import Llava, LlavaConfig

__all__ = ["Llava", "LlavaConfig"]
