"""A linear map written as one einsum, with logically partitioned kernel and bias."""

import contextlib
import contextvars
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Any
DEFAULT_KERNEL_INIT = nn.initializers.normal(stddev=0.02)

_FLAT_TOKENS = contextvars.ContextVar("mmjax_flat_token_dots", default=False)


@contextlib.contextmanager
def flat_token_dots():
  """Einsums traced inside merge the input's leading token dims (`B, T` or `...`) into one
  before the dot and split them after (same result).

  For training on XLA:CPU: the weight gradient of `BTD,DF->BTF` contracts two dims (B and T),
  which the CPU's YNNPACK dot cannot take, so XLA transposes the output gradient into
  `[F, B*T]` first, in a loop fusion that also recomputes its elementwise producers (SiLU's
  backward, residual adds) at strided reads: ~12 ms per `[642, 2048]` MLP gradient on two
  cores. With one contracting dim the dot reads the gradient as it is. Not used for TPUs,
  whose tiled layouts make merging a `T` that is not a multiple of 8 into `B` a copy.
  """
  token = _FLAT_TOKENS.set(True)
  try:
    yield
  finally:
    _FLAT_TOKENS.reset(token)


def _merged_tokens(equation: str, x_ndim: int) -> tuple[int, str]:
  """How many leading dims of the input pass straight to the output (`B, T` of `BTD,DF->BTF`,
  the `...` of `...I,OI->...O`), and the equation with them merged into one letter."""
  lhs, rest = equation.split(",")
  kernel, out = rest.split("->")
  if lhs.startswith("...") and out.startswith("..."):
    n, letters = x_ndim - (len(lhs) - 3), 3
  else:
    n = 0
    while n < min(len(lhs), len(out)) and lhs[n] == out[n] and lhs[n] not in kernel:
      n += 1
    letters = n
  token = next(c for c in "MNPQRSUVWXYZ" if c not in equation)
  return n, f"{token}{lhs[letters:]},{kernel}->{token}{out[letters:]}"


def einsum(equation: str, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`jnp.einsum(equation, x, kernel)`, with the token dims merged inside `flat_token_dots`."""
  if not _FLAT_TOKENS.get():
    return jnp.einsum(equation, x, kernel)
  n, merged = _merged_tokens(equation, x.ndim)
  if n < 2:
    return jnp.einsum(equation, x, kernel)
  y = jnp.einsum(merged, x.reshape(-1, *x.shape[n:]), kernel)  # [B*T, ...]
  return y.reshape(*x.shape[:n], *y.shape[1:])


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
    y = einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.bias_shape is not None:
      bias = self.param(
          "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
          self.bias_shape, self.param_dtype,
      )
      y = y + bias.astype(self.dtype)
    return y
