"""Qwen-VL patch merger: each 2x2 block of neighbouring patches becomes one decoder token.

The ViT emits patches merge-block-major (the four patches of a block are consecutive), so merging
is a reshape `[N, D] -> [N/4, 4D]` followed by an MLP. The norm runs per patch before the reshape
(Qwen2-VL LayerNorm, Qwen2.5-VL RMSNorm, Qwen3-VL's main merger) or over the merged vector after it
(Qwen3-VL's DeepStack mergers, "post-shuffle").
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.activations import get_activation
from mmjax.nn.linear import Einsum
from mmjax.nn.norms import LayerNorm, RMSNorm

NORMS = ("layernorm", "rmsnorm")


@dataclasses.dataclass(frozen=True)
class PatchMergerConfig:
  in_features: int  # ViT width D
  out_features: int  # decoder width
  merge_size: int = 2
  norm: str = "layernorm"
  postshuffle_norm: bool = False
  activation: str = "gelu"
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ValueError(f"unknown patch-merger norm {self.norm!r}; known: {NORMS}")

  @property
  def merged_features(self) -> int:
    return self.in_features * self.merge_size**2


class PatchMerger(nn.Module):
  """`[..., N, D]` (merge blocks consecutive) -> `[..., N / merge**2, out_features]`."""

  config: PatchMergerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    f = cfg.merged_features
    norm_cls = LayerNorm if cfg.norm == "layernorm" else RMSNorm
    norm = norm_cls(cfg.norm_eps, "vit_embed", param_dtype, name="norm")
    if not cfg.postshuffle_norm:
      x = norm(x)
    x = x.reshape(*x.shape[:-2], -1, f)  # [N/4, 4D]
    if cfg.postshuffle_norm:
      x = norm(x)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    x = Einsum("...MF,GF->...MG", (f, f), ("vit_mlp", None), bias_shape=(f,),
               bias_axes=("vit_mlp",), name="fc1", **kw)(x)  # [M, 4D]
    x = get_activation(cfg.activation)(x)
    return Einsum("...MG,EG->...ME", (cfg.out_features, f), ("embed", "vit_mlp"),
                  bias_shape=(cfg.out_features,), bias_axes=("embed",), name="fc2", **kw)(x)
