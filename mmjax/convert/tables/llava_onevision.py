"""LLaVA-OneVision (transformers `llava_onevision`): LLaVA-NeXT's tensors under the same names
(tower, projector, `image_newline`, decoder), in the same v4 and v5 spellings."""

from mmjax.convert.tables.llava_next import LAYOUTS, rules

__all__ = ["LAYOUTS", "rules"]
