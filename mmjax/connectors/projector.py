"""Linear and MLP projectors (LLaVA's `mlp2x_gelu`)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.activations import get_activation
from mmjax.nn.linear import Einsum

KINDS = ("linear", "mlp2x")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  kind: str  # 'linear' | 'mlp2x'
  in_features: int
  out_features: int
  activation: str = "gelu"  # mlp2x only
  use_bias: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown projector kind {self.kind!r}; known: {KINDS}")


class Projector(nn.Module):
  """`[..., F_vision] -> [..., D_text]`: `linear_1`, or `linear_2(act(linear_1(x)))`."""

  config: ProjectorConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))

    def linear(name, d_in, d_out, in_axis):
      return Einsum("...F,DF->...D", (d_out, d_in), ("embed", in_axis),
                    bias_shape=(d_out,) if cfg.use_bias else None, bias_axes=("embed",),
                    name=name, **kw)

    x = linear("linear_1", cfg.in_features, cfg.out_features, "vit_embed")(x)
    if cfg.kind == "mlp2x":
      x = get_activation(cfg.activation)(x)
      x = linear("linear_2", cfg.out_features, cfg.out_features, None)(x)
    return x
