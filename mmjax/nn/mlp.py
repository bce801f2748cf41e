"""Feed-forward blocks: plain two-layer MLP (ViTs, projectors) and gated MLP (Llama family)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.activations import get_activation
from mmjax.nn.linear import Einsum


class Mlp(nn.Module):
  """`fc2(act(fc1(x)))` with optional biases."""

  hidden: int
  activation: str
  in_axis: str = "embed"
  hidden_axis: str = "mlp"
  out_features: int | None = None  # defaults to the input width
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d_in = x.shape[-1]
    d_out = self.out_features or d_in
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = Einsum(
        "...D,FD->...F", (self.hidden, d_in), (self.hidden_axis, self.in_axis),
        bias_shape=(self.hidden,) if self.use_bias else None, bias_axes=(self.hidden_axis,),
        name="fc1", **kw,
    )(x)
    h = get_activation(self.activation)(h)
    return Einsum(
        "...F,DF->...D", (d_out, self.hidden), (self.in_axis, self.hidden_axis),
        bias_shape=(d_out,) if self.use_bias else None, bias_axes=(self.in_axis,),
        name="fc2", **kw,
    )(h)


class GatedMlp(nn.Module):
  """`down(act(gate(x)) * up(x))` (SwiGLU when the activation is silu)."""

  hidden: int
  activation: str = "silu"
  embed_axis: str = "embed"
  hidden_axis: str = "mlp"
  use_bias: bool = False
  # A projection to another width (Idefics2's modality projection): `down` writes this many
  # features along `out_axis`; None keeps the input's width and axis.
  out_features: int | None = None
  out_axis: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    d_out, out_axis = self.out_features or d, self.out_axis or self.embed_axis
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def proj(name, shape, axes):  # out-major kernels [out, in], as torch stores them
      return Einsum(
          "...I,OI->...O", shape, axes, bias_shape=(shape[0],) if self.use_bias else None,
          bias_axes=(axes[0],), name=name, **kw,
      )

    gate = proj("gate", (self.hidden, d), (self.hidden_axis, self.embed_axis))(x)
    up = proj("up", (self.hidden, d), (self.hidden_axis, self.embed_axis))(x)
    h = get_activation(self.activation)(gate) * up  # [..., F]
    return proj("down", (d_out, self.hidden), (out_axis, self.hidden_axis))(h)
