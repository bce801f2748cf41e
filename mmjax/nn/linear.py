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

# What the einsums traced now merge: "" (nothing), "tokens", or "matmul" (tokens and kernel).
_FLAT = contextvars.ContextVar("mmjax_flat_dots", default="")


@contextlib.contextmanager
def _flat(mode: str):
  token = _FLAT.set(mode)
  try:
    yield
  finally:
    _FLAT.reset(token)


def flat_token_dots():
  """Einsums traced inside merge the input's leading token dims (`B, T` or `...`) into one
  before the dot and split them after (same result).

  For training on XLA:CPU: the weight gradient of `BTD,DF->BTF` contracts two dims (B and T),
  which the CPU's YNNPACK dot cannot take, so XLA transposes the output gradient into
  `[F, B*T]` first, in a loop fusion that also recomputes its elementwise producers (SiLU's
  backward, residual adds) at strided reads: ~12 ms per `[642, 2048]` MLP gradient on two
  cores. With one contracting dim the dot reads the gradient as it is. Not used for TPUs, whose
  tiled layouts make merging a `T` that is not a multiple of 8 into `B` a copy.
  """
  return _flat("tokens")


def matmul_dots():
  """As `flat_token_dots`, and the kernel's output dims and its contracted dims merge too
  (`NHD` -> `[N*H, D]`): each einsum is one 2-D matrix product where its letters allow.

  For decoding on XLA:CPU: a kernel with two output dims (`BTD,NHD->BTNH`, the attention
  projections) is transposed into `[D, N*H]` before its dot, a copy of the weights at every
  decode step (as much memory traffic as the product itself); as an `[N*H, D]` matrix the dot
  reads it in place, as it does the MLP's.
  """
  return _flat("matmul")


def _token_dims(equation: str, x_ndim: int) -> tuple[int, str, str, str]:
  """How many leading dims of the input pass straight to the output (`B, T` of `BTD,DF->BTF`,
  the `...` and `M` of `...MF,GF->...MG`), and the input's, kernel's and output's letters after
  them."""
  lhs, rest = equation.split(",")
  kernel, out = rest.split("->")
  n = 0
  if lhs.startswith("...") and out.startswith("..."):
    n, lhs, out = x_ndim - (len(lhs) - 3), lhs[3:], out[3:]
  k = 0
  while k < min(len(lhs), len(out)) and lhs[k] == out[k] and lhs[k] not in kernel:
    k += 1
  return n + k, lhs[k:], kernel, out[k:]


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
  """`jnp.einsum(equation, x, kernel)`, with dims merged inside `flat_token_dots` or
  `matmul_dots`."""
  mode = _FLAT.get()
  if not mode:
    return jnp.einsum(equation, x, kernel)
  n, lhs, kernel_letters, out = _token_dims(equation, x.ndim)
  order = _as_matmul(lhs, kernel_letters, out) if mode == "matmul" else None
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
