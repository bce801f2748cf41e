"""Shared building blocks: one concept per file."""

from mmjax.nn.activations import ACTIVATIONS, get_activation
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import TEXT_AXES, VISION_AXES, Axes
from mmjax.nn.cross_attention import CrossAttention
from mmjax.nn.linear import Einsum
from mmjax.nn.mask_spec import CrossMaskSpec, MaskSpec
from mmjax.nn.masks import (attention_mask, positions_from_attention_mask,
                             tile_cross_attention_mask, unmask_empty_rows)
from mmjax.nn.mlp import GatedMlp, Mlp
from mmjax.nn.multihead import MultiHeadAttention
from mmjax.nn.norms import LayerNorm, RMSNorm
from mmjax.nn.relative_position import RelativePositionBias, relative_position_bucket
from mmjax.nn.rope import RopeConfig, apply_rope, rope_cos_sin
from mmjax.nn.stack import scan_layers

__all__ = [
    "ACTIVATIONS", "Axes", "CrossAttention", "CrossMaskSpec", "Einsum", "GatedMlp", "LayerNorm",
    "MaskSpec", "Mlp", "MultiHeadAttention", "RMSNorm", "RelativePositionBias", "RopeConfig",
    "TEXT_AXES", "VISION_AXES", "apply_rope", "attention_mask", "dot_product_attention",
    "get_activation", "positions_from_attention_mask", "relative_position_bucket", "rope_cos_sin",
    "scan_layers",
    "tile_cross_attention_mask", "unmask_empty_rows",
]
