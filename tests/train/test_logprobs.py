"""Per-token target log-probabilities: the chunked LM head (`target_logprobs`, forward and
custom backward) equals the dense computation, values and gradients, also under `vmap` with
shared head parameters, and with values the logits function closes over."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train.logprobs import target_logprobs, token_logprobs

B, T, D, V = 3, 11, 8, 17


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  labels = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T)) < 0.4, jnp.float32).at[2].set(0)  # a row without any
  return f32(D, V), f32(B, T, D), f32(D), labels, mask, f32(B, T)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_equals_dense_values_and_gradients(chunk):
  w, h, shift, labels, mask, g = _inputs()

  def dense(w, h, shift):
    return jnp.sum(token_logprobs((h + shift) @ w, labels, mask) * g)

  def chunked(w, h, shift):
    # `shift` is closed over by the logits function: its cotangent still arrives.
    logits_fn = lambda p, hidden, rows: (jnp.take_along_axis(hidden, rows[..., None], 1)
                                         + shift) @ p
    return jnp.sum(target_logprobs(w, h, logits_fn, labels, mask, chunk) * g)

  want, want_grads = jax.value_and_grad(dense, (0, 1, 2))(w, h, shift)
  got, got_grads = jax.jit(jax.value_and_grad(chunked, (0, 1, 2)))(w, h, shift)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(got_grads, want_grads):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert not np.any(np.asarray(got_grads[1])[2])  # no target in row 2: no gradient


def test_under_vmap_the_shared_head_gets_both_cotangents():
  w, h, _, labels, mask, _ = _inputs()
  hs, ls, ms = jnp.stack([h, 0.5 * h]), jnp.stack([labels, labels[::-1]]), jnp.stack(
      [mask, mask[::-1]])
  take = lambda p, hidden, rows: jnp.take_along_axis(hidden, rows[..., None], 1) @ p

  def vmapped(w, hs):
    one = lambda h, l, m: target_logprobs(w, h, take, l, m, 4)
    return jnp.sum(jax.vmap(one)(hs, ls, ms))

  def dense(w, hs):
    return sum(jnp.sum(token_logprobs(hs[i] @ w, ls[i], ms[i])) for i in range(2))

  got = jax.jit(jax.grad(vmapped, (0, 1)))(w, hs)
  for a, b in zip(got, jax.grad(dense, (0, 1))(w, hs)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
