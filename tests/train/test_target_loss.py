"""The target-only chunked loss equals the dense loss, in value and gradient."""

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


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 64])
@pytest.mark.parametrize("targets", ["sparse", "all", "none", "one_row_full"])
def test_chunked_target_loss_matches_dense(chunk, targets):
  hidden, head, labels = _problem()
  rng = np.random.default_rng(1)
  mask = {"sparse": rng.random(labels.shape) < 0.2, "all": np.ones(labels.shape, bool),
          "none": np.zeros(labels.shape, bool),
          "one_row_full": np.arange(3)[:, None] == np.zeros((1, 37), int)}[targets]
  mask = jnp.asarray(mask, jnp.float32)
  logits = lambda p, h: jnp.tanh(h * p["scale"]) @ p["head"]  # a "norm" before the head
  logits_fn = lambda p, h, rows: logits(p, take_rows(h, rows))
  params = {"scale": jnp.linspace(0.5, 1.5, hidden.shape[-1]), "head": head}

  def dense(h, p):
    return cross_entropy(logits(p, h), labels, mask, z_loss=1e-3)

  def chunked(h, p):
    return target_cross_entropy(p, h, logits_fn, labels, mask, chunk, z_loss=1e-3)

  (want, want_n), want_g = jax.value_and_grad(dense, argnums=(0, 1), has_aux=True)(hidden, params)
  (got, got_n), got_g = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(
      hidden, params)
  assert float(got_n) == float(want_n) == float(mask.sum())
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # Under a scaled cotangent (the train step divides by the target count) as well.
  scaled = lambda f: lambda h, p: 0.25 * f(h, p)[0]
  for g, w in zip(jax.tree.leaves(jax.grad(scaled(chunked), argnums=(0, 1))(hidden, params)),
                  jax.tree.leaves(jax.grad(scaled(dense), argnums=(0, 1))(hidden, params))):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # With `scale` (the train step's 1 / targets), value and gradients are scaled.
  scaled_chunked = lambda h, p: target_cross_entropy(p, h, logits_fn, labels, mask, chunk,
                                                     z_loss=1e-3, scale=jnp.float32(0.25))[0]
  got, got_g = jax.jit(jax.value_and_grad(scaled_chunked, argnums=(0, 1)))(hidden, params)
  np.testing.assert_allclose(got, 0.25 * want, rtol=1e-6, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, 0.25 * w, rtol=1e-5, atol=1e-6)


def test_weighted_mask_keeps_weights():
  hidden, head, labels = _problem(seed=2)
  mask = jnp.asarray(np.random.default_rng(3).random(labels.shape) * (np.arange(37) % 3 == 0),
                     jnp.float32)
  want = cross_entropy(hidden @ head, labels, mask)
  got = target_cross_entropy(head, hidden, lambda w, h, rows: take_rows(h, rows) @ w, labels,
                             mask, 4)
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
