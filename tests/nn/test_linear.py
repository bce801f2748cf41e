"""`flat_token_dots`: the einsums of the layers give the same values and gradients with the token
dims merged, and the weight-gradient dots then contract a single dimension."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.linear import einsum, flat_token_dots

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


@pytest.mark.parametrize("equation, x_shape, kernel_shape", CASES)
def test_merged_token_dims_give_the_same_values_and_gradients(equation, x_shape, kernel_shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
  expected = jnp.einsum(equation, x, kernel)
  grads = jax.grad(_loss, argnums=(1, 2))(equation, x, kernel)
  with flat_token_dots():
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
