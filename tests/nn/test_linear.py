"""`flat_token_dots` / `matmul_dots`: the einsums of the layers give the same values and gradients
with the token dims (and, for `matmul_dots`, the kernel's dims) merged; the weight-gradient dots
then contract a single dimension, and `matmul_dots` makes every layer einsum one 2-D product."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.linear import einsum, flat_token_dots, matmul_dots

# (equation, input shape, kernel shape): the equations the encoders, connectors and decoders use.
CASES = [
    ("...F,DF->...D", (2, 5, 6), (4, 6)),
    ("...F,DF->...D", (3, 2, 5, 6), (4, 6)),
    ("...MF,GF->...MG", (2, 3, 4, 6), (5, 6)),
    ("BTD,NHD->BTNH", (2, 5, 6), (3, 4, 6)),
    ("BTNH,DNH->BTD", (2, 5, 3, 4), (6, 3, 4)),
    ("BNcpq,Dcpq->BND", (2, 5, 3, 2, 2), (4, 3, 2, 2)),
]


def _loss(equation, x, kernel):
  return jnp.sum(jnp.sin(einsum(equation, x, kernel)))


@pytest.mark.parametrize("context", [flat_token_dots, matmul_dots])
@pytest.mark.parametrize("equation, x_shape, kernel_shape", CASES)
def test_merged_dims_give_the_same_values_and_gradients(equation, x_shape, kernel_shape, context):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
  expected = jnp.einsum(equation, x, kernel)
  grads = jax.grad(_loss, argnums=(1, 2))(equation, x, kernel)
  with context():
    merged = einsum(equation, x, kernel)
    merged_grads = jax.grad(_loss, argnums=(1, 2))(equation, x, kernel)
  assert merged.shape == expected.shape
  np.testing.assert_allclose(merged, expected, rtol=1e-6, atol=1e-6)
  for got, want in zip(merged_grads, grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _contracting_dim_counts(equation, x, kernel) -> list[int]:
  hlo = jax.jit(jax.grad(_loss, argnums=2), static_argnums=0).lower(equation, x, kernel).as_text()
  return [len(m.split(",")) for m in re.findall(r"contracting_dims = \[([\d, ]*)\] x", hlo)]


def test_the_weight_gradient_contracts_one_dim():
  x, kernel = jnp.ones((2, 5, 6)), jnp.ones((4, 6))
  assert max(_contracting_dim_counts("BTF,DF->BTD", x, kernel)) == 2
  with flat_token_dots():
    assert max(_contracting_dim_counts("BTF,DF->BTD", x, kernel)) == 1


def test_outside_the_context_einsum_is_jnp_einsum():
  x, kernel = jnp.ones((2, 5, 6)), jnp.ones((4, 6))
  hlo = jax.jit(lambda a, b: einsum("BTF,DF->BTD", a, b)).lower(x, kernel).as_text()
  assert "reshape" not in hlo


@pytest.mark.parametrize("equation, x_shape, kernel_shape", CASES)
def test_matmul_dots_are_one_2d_product(equation, x_shape, kernel_shape):
  """Kernels with two output dims (`NHD`) or two contracted ones (`DNH`) are read as matrices:
  XLA:CPU otherwise transposes them before the dot (a copy of the weights at every decode step)."""
  x, kernel = jnp.ones(x_shape), jnp.ones(kernel_shape)
  with matmul_dots():
    hlo = jax.jit(lambda a, b: einsum(equation, a, b)).lower(x, kernel).as_text()
  dots = re.findall(r"stablehlo.dot_general %\S+, %\S+, contracting_dims = \[(\d+)\] x \[(\d+)\]"
                    r".*: \((tensor<[^>]*>), (tensor<[^>]*>)\)", hlo)
  assert len(dots) == 1, hlo
  for operand in dots[0][2:]:
    assert operand.count("x") == 2, hlo  # rank 2: `tensor<AxBxf32>`
