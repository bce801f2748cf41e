"""Idefics2's connector: a gated (SwiGLU) modality projection from the vision width to the text
width, then a Perceiver Resampler (`mmjax.connectors.perceiver`) that reads every patch feature
of an image, padding patches masked out, into a fixed number of visual tokens."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.connectors.perceiver import PerceiverResampler, ResamplerConfig
from mmjax.nn.mlp import GatedMlp


@dataclasses.dataclass(frozen=True)
class ProjectedResamplerConfig:
  in_features: int  # the vision tower's width
  hidden: int  # the projection's gated width (transformers: the text model's intermediate_size)
  activation: str  # the projection's (transformers: the text model's hidden_act)
  resampler: ResamplerConfig  # its `features` is the text width, the projection's output
  dtype: str = "float32"
  param_dtype: str = "float32"


class ProjectedResampler(nn.Module):
  """`features [I, S, D_vision]`, `mask [I, S]` (True: a real patch) -> `[I, L, D_text]`."""

  config: ProjectedResamplerConfig

  @nn.compact
  def __call__(self, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    x = GatedMlp(cfg.hidden, cfg.activation, embed_axis="vit_embed", out_axis="embed",
                 out_features=cfg.resampler.features, dtype=jnp.dtype(cfg.dtype),
                 param_dtype=jnp.dtype(cfg.param_dtype), name="projection")(features)
    return PerceiverResampler(cfg.resampler, name="resampler")(x, mask)  # [I, L, D_text]
