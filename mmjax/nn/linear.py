"""A linear map written as one einsum, with logically partitioned kernel and bias."""

import contextlib
import contextvars
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Any
DEFAULT_KERNEL_INIT = nn.initializers.normal(stddev=0.02)

_FLAT_TOKENS = contextvars.ContextVar("mmjax_flat_token_dots", default=False)


@contextlib.contextmanager
def flat_token_dots():
  """Einsums traced inside run as one 2-D matrix product where they can: the input's leading
  token dims (`B, T` or `...`) merge into one, and so do the kernel's output dims and its
  contracted dims (`NHD` -> `[N*H, D]`); the result is reshaped back (same values).

  For XLA:CPU. Training: the weight gradient of `BTD,DF->BTF` contracts two dims (B and T),
  which the CPU's YNNPACK dot cannot take, so XLA transposes the output gradient into
  `[F, B*T]` first, in a loop fusion that also recomputes its elementwise producers (SiLU's
  backward, residual adds) at strided reads: ~12 ms per `[642, 2048]` MLP gradient on two
  cores. With one contracting dim the dot reads the gradient as it is. Decoding: a kernel with
  two output dims (`BTD,NHD->BTNH`, the attention projections) is transposed into `[D, N*H]`
  before its dot, a copy of the weights at every decode step (as much memory traffic as the
  product itself); as a `[N*H, D]` matrix the dot reads it in place, as it does the MLP's.
  Not used for TPUs, whose tiled layouts make merging a `T` that is not a multiple of 8 into `B`
  a copy.
  """
  token = _FLAT_TOKENS.set(True)
  try:
    yield
  finally:
    _FLAT_TOKENS.reset(token)


def _token_dims(equation: str, x_ndim: int) -> tuple[int, str, str, str]:
  """How many leading dims of the input pass straight to the output (`B, T` of `BTD,DF->BTF`,
  the `...` of `...I,OI->...O`), and the input's, kernel's and output's letters after them."""
  lhs, rest = equation.split(",")
  kernel, out = rest.split("->")
  if lhs.startswith("...") and out.startswith("..."):
    return x_ndim - (len(lhs) - 3), lhs[3:], kernel, out[3:]
  n = 0
  while n < min(len(lhs), len(out)) and lhs[n] == out[n] and lhs[n] not in kernel:
    n += 1
  return n, lhs[n:], kernel, out[n:]


def _as_matmul(lhs: str, kernel: str, out: str) -> str | None:
  """`'OC'` or `'CO'` when the kernel is its output letters then its contracted letters (or the
  reverse), each group in the order the input and output spell it: then the einsum is one
  `[M, C] x [O, C]` (or `[C, O]`) product. None otherwise."""
  contracted = "".join(c for c in lhs if c in kernel and c not in out)
  outputs = "".join(c for c in out if c in kernel and c not in lhs)
  if lhs != contracted or out != outputs or not contracted or not outputs:
    return None
  if kernel == outputs + contracted:
    return "OC"
  if kernel == contracted + outputs:
    return "CO"
  return None


def einsum(equation: str, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`jnp.einsum(equation, x, kernel)`, as a 2-D matrix product inside `flat_token_dots`."""
  if not _FLAT_TOKENS.get():
    return jnp.einsum(equation, x, kernel)
  n, lhs, kernel_letters, out = _token_dims(equation, x.ndim)
  order = _as_matmul(lhs, kernel_letters, out)
  tokens = x.shape[:n]
  if order is None:  # merge the token dims alone
    if n < 2:
      return jnp.einsum(equation, x, kernel)
    letter = next(c for c in "MNPQRSUVWXYZ" if c not in equation)
    y = jnp.einsum(f"{letter}{lhs},{kernel_letters}->{letter}{out}",
                   x.reshape(-1, *x.shape[n:]), kernel)  # [B*T, ...]
    return y.reshape(*tokens, *y.shape[1:])
  sizes = dict(zip(kernel_letters, kernel.shape))
  c = math.prod(sizes[l] for l in lhs)
  o = math.prod(sizes[l] for l in out)
  matrix = kernel.reshape((o, c) if order == "OC" else (c, o))
  y = jnp.einsum(f"MC,{order}->MO", x.reshape(-1, c), matrix)  # [prod(tokens), O]
  return y.reshape(*tokens, *(sizes[l] for l in out))


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
