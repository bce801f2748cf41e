"""A linear map written as one einsum, with logically partitioned kernel and bias."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Any
DEFAULT_KERNEL_INIT = nn.initializers.normal(stddev=0.02)


class Einsum(nn.Module):
  """`y = einsum(equation, x, kernel) + bias`.

  Kernels keep their natural multi-dimensional shape (e.g. `[D, N, H]` for a query projection),
  so attention heads are a real axis that sharding rules can name.
  """

  equation: str  # e.g. 'BTD,DNH->BTNH'
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  bias_shape: tuple[int, ...] | None = None
  bias_axes: tuple[str | None, ...] | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, self.axes), self.shape,
        self.param_dtype,
    )
    y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.bias_shape is not None:
      bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
          self.bias_shape, self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    return y
