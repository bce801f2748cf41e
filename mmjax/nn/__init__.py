"""Shared building blocks: one concept per file."""

from mmjax.nn.activations import ACTIVATIONS, get_activation
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.axes import TEXT_AXES, VISION_AXES, Axes
from mmjax.nn.linear import Einsum
from mmjax.nn.masks import attention_mask, positions_from_attention_mask
from mmjax.nn.mlp import GatedMlp, Mlp
from mmjax.nn.multihead import MultiHeadAttention
from mmjax.nn.norms import LayerNorm, RMSNorm
from mmjax.nn.rope import RopeConfig, apply_rope, rope_cos_sin
from mmjax.nn.stack import scan_layers

__all__ = [
    "ACTIVATIONS", "Axes", "Einsum", "GatedMlp", "LayerNorm", "Mlp", "MultiHeadAttention", "RMSNorm",
    "RopeConfig",
    "TEXT_AXES", "VISION_AXES", "apply_rope", "attention_mask", "dot_product_attention",
    "get_activation", "positions_from_attention_mask", "rope_cos_sin", "scan_layers",
]
