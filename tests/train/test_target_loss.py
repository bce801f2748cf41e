"""The target-only chunked loss equals the dense loss, in value and gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.multihead import take_rows
from mmjax.train import cli
from mmjax.train.loss import DEFAULT_CHUNK, cross_entropy, target_cross_entropy


def _problem(rows=3, length=37, width=16, vocab=50, seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(rows, length, width)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(width, vocab)) / 4, jnp.float32)
  labels = jnp.asarray(rng.integers(0, vocab, (rows, length)), jnp.int32)
  return hidden, head, labels


def _mask(targets: str) -> jax.Array:
  rng = np.random.default_rng(1)
  shape = (3, 37)
  mask = {"sparse": rng.random(shape) < 0.2, "all": np.ones(shape, bool),
          "none": np.zeros(shape, bool),
          "one_row_full": np.arange(3)[:, None] == np.zeros((1, 37), int)}[targets]
  return jnp.asarray(mask, jnp.float32)


_logits = lambda p, h: jnp.tanh(h * p["scale"]) @ p["head"]  # a "norm" before the head
_logits_fn = lambda p, h, rows: _logits(p, take_rows(h, rows))


@functools.cache
def _dense(targets: str):
  """The dense loss's value, count and gradients, and its gradients under a 0.25 cotangent: the
  same for every chunk size, so computed once per mask."""
  hidden, head, labels = _problem()
  mask = _mask(targets)
  params = {"scale": jnp.linspace(0.5, 1.5, hidden.shape[-1]), "head": head}
  dense = lambda h, p: cross_entropy(_logits(p, h), labels, mask, z_loss=1e-3)
  value = jax.value_and_grad(dense, argnums=(0, 1), has_aux=True)(hidden, params)
  scaled = jax.grad(lambda h, p: 0.25 * dense(h, p)[0], argnums=(0, 1))(hidden, params)
  return value, scaled


# The chunked loss compiled once per chunk size (labels and mask are arguments), not per case.
@functools.partial(jax.jit, static_argnames="chunk")
def _chunked(hidden, params, labels, mask, chunk):
  chunked = lambda h, p: target_cross_entropy(p, h, _logits_fn, labels, mask, chunk, z_loss=1e-3)
  value = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, params)
  # Under a scaled cotangent (the train step divides by the target count) as well.
  scaled = jax.grad(lambda h, p: 0.25 * chunked(h, p)[0], argnums=(0, 1))(hidden, params)
  # With `scale` (the train step's 1 / targets), value and gradients are scaled.
  scaled_chunked = lambda h, p: target_cross_entropy(p, h, _logits_fn, labels, mask, chunk,
                                                     z_loss=1e-3, scale=jnp.float32(0.25))[0]
  return value, scaled, jax.value_and_grad(scaled_chunked, argnums=(0, 1))(hidden, params)


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 64])
@pytest.mark.parametrize("targets", ["sparse", "all", "none", "one_row_full"])
def test_chunked_target_loss_matches_dense(chunk, targets):
  hidden, head, labels = _problem()
  mask = _mask(targets)
  params = {"scale": jnp.linspace(0.5, 1.5, hidden.shape[-1]), "head": head}
  ((want, want_n), want_g), want_scaled_g = _dense(targets)
  ((got, got_n), got_g), got_scaled_g, (got_scaled, got_scaled_vg) = _chunked(
      hidden, params, labels, mask, chunk)
  assert float(got_n) == float(want_n) == float(mask.sum())
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # Under a scaled cotangent (the train step divides by the target count) as well.
  for g, w in zip(jax.tree.leaves(got_scaled_g), jax.tree.leaves(want_scaled_g)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # With `scale` (the train step's 1 / targets), value and gradients are scaled.
  np.testing.assert_allclose(got_scaled, 0.25 * want, rtol=1e-6, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got_scaled_vg), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, 0.25 * w, rtol=1e-5, atol=1e-6)


def test_weighted_mask_keeps_weights():
  hidden, head, labels = _problem(seed=2)
  mask = jnp.asarray(np.random.default_rng(3).random(labels.shape) * (np.arange(37) % 3 == 0),
                     jnp.float32)
  want = cross_entropy(hidden @ head, labels, mask)
  got = jax.jit(lambda head, hidden, labels, mask: target_cross_entropy(
      head, hidden, lambda w, h, rows: take_rows(h, rows) @ w, labels, mask, 4))(
          head, hidden, labels, mask)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cli_default_is_the_library_default():
  assert cli.OPTIONAL_KEYS["train"]["loss_chunk"] == DEFAULT_CHUNK


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_head_reads_only_head_params(tied):
  """The train step differentiates the head through `head_params` alone: it must be all that
  `Decoder.logits` reads, tied or not, and give the full forward's logits."""
  from mmjax.decoders.config import DecoderConfig
  from mmjax.decoders.llama import head_params
  from mmjax.models.standalone import CausalLM

  cfg = DecoderConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=4, tie_embeddings=tied)
  model = CausalLM(cfg)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 7)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
  params = model.init(jax.random.PRNGKey(0), ids, positions)["params"]
  want = model.apply({"params": params}, ids, positions).logits
  hidden = model.apply({"params": params}, ids, positions).hidden
  head = {"decoder": head_params(params["decoder"])}
  assert ("embed" in head["decoder"]) == tied and ("lm_head" in head["decoder"]) != tied
  got = model.apply({"params": head}, hidden, method=lambda m, h: m.decoder.logits(h))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_negative_loss_chunk_is_refused():
  from mmjax.train.step import make_train_step

  with pytest.raises(ValueError, match="loss_chunk"):
    make_train_step(None, None, None, loss_chunk=-1)
