"""InternVL's connector: pixel shuffle (space-to-depth) then LayerNorm + two-layer MLP.

A ratio of 0.5 folds each 2x2 block of patch features into one token with 4x the channels, so a
448-px tile of 32x32 patches becomes 256 tokens.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.activations import get_activation
from mmjax.nn.linear import Einsum
from mmjax.nn.norms import LayerNorm


@dataclasses.dataclass(frozen=True)
class PixelShuffleConfig:
  vision_features: int  # D_v, before the shuffle
  out_features: int  # D_text
  downsample_ratio: float = 0.5
  activation: str = "gelu"
  norm_eps: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if not 0 < self.downsample_ratio <= 1 or (1 / self.downsample_ratio) % 1:
      raise ValueError(f"downsample_ratio must be 1/k for an integer k, got {self.downsample_ratio}")

  @property
  def factor(self) -> int:
    return int(round(1 / self.downsample_ratio))

  @property
  def in_features(self) -> int:
    return self.vision_features * self.factor**2


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """`[B, W, H, C] -> [B, W/f, H/f, C*f*f]` in InternVL's channel order (its 'v2' shuffle).

  The first two axes are named as InternVL names them; the result is laid out as its torch code
  lays it out, which is what the trained MLP expects.
  """
  b, w, h, c = x.shape
  if w % factor or h % factor:
    raise ValueError(f"feature grid {w}x{h} is not divisible by the shuffle factor {factor}")
  x = x.reshape(b, w, h // factor, c * factor).transpose(0, 2, 1, 3)  # [B, H/f, W, C*f]
  x = x.reshape(b, h // factor, w // factor, c * factor * factor)
  return x.transpose(0, 2, 1, 3)  # [B, W/f, H/f, C*f*f]


class PixelShuffleMlp(nn.Module):
  """`[I, N, D_v]` patch features (N a square grid) -> `[I, N/f^2, D_text]`."""

  config: PixelShuffleConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    i, n, d = x.shape
    side = int(round(n**0.5))
    if side * side != n:
      raise ValueError(f"pixel shuffle needs a square patch grid, got {n} patches")
    x = pixel_shuffle(x.reshape(i, side, side, d), cfg.factor).reshape(i, -1, cfg.in_features)
    x = LayerNorm(cfg.norm_eps, "vit_embed", kw["param_dtype"], name="norm")(x)

    def linear(name, d_in, in_axis):
      return Einsum("...F,DF->...D", (cfg.out_features, d_in), ("embed", in_axis),
                    bias_shape=(cfg.out_features,), bias_axes=("embed",), name=name, **kw)

    x = linear("linear_1", cfg.in_features, "vit_embed")(x)
    x = get_activation(cfg.activation)(x)
    return linear("linear_2", cfg.out_features, None)(x)  # [I, N/f^2, D_text]
