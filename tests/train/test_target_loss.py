"""The target-only chunked loss equals the dense loss, in value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import cli
from mmjax.train.loss import DEFAULT_CHUNK, cross_entropy, target_cross_entropy


def _problem(rows=3, length=37, width=16, vocab=50, seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(rows, length, width)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(width, vocab)) / 4, jnp.float32)
  labels = jnp.asarray(rng.integers(0, vocab, (rows, length)), jnp.int32)
  return hidden, head, labels


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 64])
@pytest.mark.parametrize("targets", ["sparse", "all", "none", "one_row_full"])
def test_chunked_target_loss_matches_dense(chunk, targets):
  hidden, head, labels = _problem()
  rng = np.random.default_rng(1)
  mask = {"sparse": rng.random(labels.shape) < 0.2, "all": np.ones(labels.shape, bool),
          "none": np.zeros(labels.shape, bool),
          "one_row_full": np.arange(3)[:, None] == np.zeros((1, 37), int)}[targets]
  mask = jnp.asarray(mask, jnp.float32)
  logits_fn = lambda h, w: jnp.tanh(h) @ w  # a non-linear "norm" before the head

  def dense(h, w):
    return cross_entropy(logits_fn(h, w), labels, mask, z_loss=1e-3)

  def chunked(h, w):
    return target_cross_entropy(h, lambda x: logits_fn(x, w), labels, mask, chunk, z_loss=1e-3)

  (want, want_n), want_g = jax.value_and_grad(dense, argnums=(0, 1), has_aux=True)(hidden, head)
  (got, got_n), got_g = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(
      hidden, head)
  assert float(got_n) == float(want_n) == float(mask.sum())
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_weighted_mask_keeps_weights():
  hidden, head, labels = _problem(seed=2)
  mask = jnp.asarray(np.random.default_rng(3).random(labels.shape) * (np.arange(37) % 3 == 0),
                     jnp.float32)
  want = cross_entropy(hidden @ head, labels, mask)
  got = target_cross_entropy(hidden, lambda h: h @ head, labels, mask, 4)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cli_default_is_the_library_default():
  assert cli.OPTIONAL_KEYS["train"]["loss_chunk"] == DEFAULT_CHUNK
