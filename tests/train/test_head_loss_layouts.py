"""The target-only loss on decoders with cross-attention layers (segments of repeated groups):
loss and every gradient (parameters, embeddings, image states) equal the dense loss's, whether
the last layer is a self- or a cross-attention layer, in one segment or several; with IDEFICS'
gated layers and its decoupled vocabulary."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.cross import CrossInputs
from mmjax.decoders.layout import plan_layers
from mmjax.decoders.llama import Decoder
from mmjax.nn.masks import unmask_empty_rows
from mmjax.train.loss import cross_entropy, target_cross_entropy

BASE = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2,
            head_dim=8)
# name -> (layers, cross-attention layers, segments expected, other decoder settings)
CASES = {
    "last_layer_cross_one_segment": (4, (1, 3), 1, {}),
    "last_layer_self_periodic": (6, (1, 4), 1, {}),
    "irregular_several_segments": (5, (0, 1, 3), 3, {}),
    "cross_only_at_the_start": (3, (0,), 2, {}),
    "gated_vector_additional_vocab": (6, (0, 3), 1, dict(
        cross_attention_kind="gated_cross", cross_attention_gate="vector",
        additional_vocab_size=3)),
}
ROWS, LENGTH, STATES = 3, 13, 10


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  embeddings = jnp.asarray(rng.normal(size=(ROWS, LENGTH, BASE["hidden_size"])), jnp.float32)
  states = jnp.asarray(rng.normal(size=(ROWS, STATES, BASE["hidden_size"])), jnp.float32)
  labels = jnp.asarray(rng.integers(0, BASE["vocab_size"], (ROWS, LENGTH)), jnp.int32)
  sees = rng.random((ROWS, LENGTH, STATES)) < 0.5
  sees[0, :4] = False  # tokens before any image
  sees[2] = False  # a row that sees no image
  row_mask = jnp.asarray(sees.any(-1), jnp.float32)
  cross = CrossInputs(None, unmask_empty_rows(jnp.asarray(sees))[:, None], row_mask)
  valid = np.ones((ROWS, LENGTH), np.int32)
  valid[0, :2] = 0
  mask = np.zeros((ROWS, LENGTH), np.float32)
  mask[0, [3, 9, 12]] = 1
  mask[1, 2:11] = 1
  mask[2, [5, 6]] = 1
  positions = np.maximum(np.arange(LENGTH)[None] - np.array([[2], [0], [0]]), 0)
  return (dict(positions=jnp.asarray(positions, jnp.int32), attention_mask_=jnp.asarray(valid)),
          embeddings, states, cross, labels, jnp.asarray(mask))


@functools.cache
def _params(cfg: DecoderConfig):
  """The decoder's initial parameters, initialised once per configuration (the text-only test
  shares a case's) and compiled: op by op, an init took 9-21 s on a CPU, compiled 8-15 s."""
  inputs, embeddings, states, cross, _, _ = _inputs()
  init = lambda key: Decoder(cfg).init(key, embeddings, **inputs,
                                       cross=cross.replace(states=states))
  return nn.unbox(jax.jit(init)(jax.random.PRNGKey(0))["params"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_head_loss_equals_the_dense_loss(name):
  layers, cross_layers, segments, other = CASES[name]
  cfg = DecoderConfig(num_layers=layers, cross_attention_layers=cross_layers, **BASE, **other)
  assert len(plan_layers(layers, cross_layers)) == segments
  inputs, embeddings, states, cross, labels, mask = _inputs()
  model = Decoder(cfg)
  params = _params(cfg)
  # Open the gates so cross-attention matters.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 if p[-1].key.endswith("_gate") else x, params)
  scale = 1 / jnp.sum(mask)

  def dense(params, embeddings, states):
    logits = model.apply({"params": params}, embeddings, **inputs,
                         cross=cross.replace(states=states)).logits
    return cross_entropy(logits, labels, mask)[0] * scale

  def chunked(params, embeddings, states):
    def head_loss(logits_fn, head, hidden):
      return target_cross_entropy(head, hidden, logits_fn, labels, mask, 4, scale=scale)
    return model.apply({"params": params}, embeddings, **inputs, head_loss=head_loss,
                       cross=cross.replace(states=states)).loss[0]

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(params, embeddings, states)
  (want, want_grads), (got, got_grads) = grad(dense), grad(chunked)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  flat, want_flat = (jax.tree_util.tree_leaves_with_path(g) for g in (got_grads, want_grads))
  assert [p for p, _ in flat] == [p for p, _ in want_flat]
  for (path, g), (_, w) in zip(flat, want_flat):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(got_grads[2]).max()) > 0  # the image states are differentiated


@pytest.mark.parametrize("kind", ["cross", "gated_cross"])
def test_head_loss_of_a_text_only_batch_when_the_last_layer_is_cross(kind):
  """A batch without images skips the cross layers; the last one still returns target rows."""
  cfg = DecoderConfig(num_layers=4, cross_attention_layers=(1, 3), cross_attention_kind=kind,
                      **BASE)
  inputs, embeddings, states, cross, labels, mask = _inputs()
  model = Decoder(cfg)
  params = _params(cfg)
  dense = jax.jit(lambda params: cross_entropy(
      model.apply({"params": params}, embeddings, **inputs).logits, labels, mask)[0]
      / jnp.sum(mask))(params)

  def head_loss(logits_fn, head, hidden):
    return target_cross_entropy(head, hidden, logits_fn, labels, mask, 4, scale=1 / jnp.sum(mask))
  chunked = jax.jit(lambda params: model.apply(
      {"params": params}, embeddings, **inputs, head_loss=head_loss).loss[0])(params)
  np.testing.assert_allclose(chunked, dense, rtol=1e-6, atol=1e-6)
