"""`Decoder(head_loss=...)`: the last layer run only at target positions, inside the chunked
target loss, gives the dense loss and its gradients (every parameter and the input embeddings)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import Decoder
from mmjax.train.loss import cross_entropy, target_cross_entropy

BASE = DecoderConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=8)
CASES = {
    "llama_gqa": dict(),
    "one_layer": dict(num_layers=1),
    "qwen3_qk_norm_bias_tied": dict(qk_norm=True, qkv_bias=True, tie_embeddings=True),
    "sliding_window": dict(sliding_window=4),
}
ROWS, LENGTH = 3, 19


def _inputs(seed=0, deepstack=0):
  rng = np.random.default_rng(seed)
  embeddings = jnp.asarray(rng.normal(size=(ROWS, LENGTH, BASE.hidden_size)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, BASE.vocab_size, (ROWS, LENGTH)), jnp.int32)
  # Row 0 left-padded; row 1 two packed samples; row 2 plain. Targets: a few positions per row,
  # row 2 more than one chunk of them.
  valid = np.ones((ROWS, LENGTH), np.int32)
  valid[0, :5] = 0
  segments = np.ones((ROWS, LENGTH), np.int32)
  segments[1, 9:] = 2
  mask = np.zeros((ROWS, LENGTH), np.float32)
  mask[0, [7, 8, 15]] = 1
  mask[1, [4, 5, 12, 13, 18]] = 1
  mask[2, 6:17] = 1
  positions = np.tile(np.arange(LENGTH), (ROWS, 1))
  positions[0] = np.maximum(positions[0] - 5, 0)  # after the left padding
  positions[1, 9:] -= 9  # the second packed sample restarts
  layer_inputs = None
  if deepstack:
    layer_inputs = jnp.asarray(rng.normal(size=(deepstack, ROWS, LENGTH, BASE.hidden_size)),
                               jnp.float32)
  return dict(embeddings=embeddings, positions=jnp.asarray(positions, jnp.int32),
              attention_mask_=jnp.asarray(valid), segment_ids=jnp.asarray(segments),
              layer_inputs=layer_inputs), labels, jnp.asarray(mask)


def _losses(cfg, chunk, deepstack=0):
  """(dense loss, gradients), (head-loss loss, gradients); gradients of the parameters, the
  embeddings and the DeepStack inputs."""
  inputs, labels, mask = _inputs(deepstack=deepstack)
  model = Decoder(cfg)
  params = model.init(jax.random.PRNGKey(0), **inputs)["params"]
  scale = 1 / jnp.sum(mask)

  floats = {k: inputs.pop(k) for k in ("embeddings", "layer_inputs")}  # differentiated

  def dense(params, floats):
    logits = model.apply({"params": params}, **floats, **inputs).logits
    return cross_entropy(logits, labels, mask, z_loss=1e-3)[0] * scale

  def chunked(params, floats):
    def head_loss(logits_fn, head, hidden):
      return target_cross_entropy(head, hidden, logits_fn, labels, mask, chunk, z_loss=1e-3,
                                  scale=scale)
    loss, count = model.apply({"params": params}, **floats, **inputs, head_loss=head_loss).loss
    return loss

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, floats)
  return grad(dense), grad(chunked)


def _assert_equal(got, want):
  (loss, grads), (want_loss, want_grads) = got, want
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-6)
  flat, want_flat = (jax.tree_util.tree_leaves_with_path(g) for g in (grads, want_grads))
  assert [path for path, _ in flat] == [path for path, _ in want_flat]
  for (path, g), (_, w) in zip(flat, want_flat):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_last_layer_at_targets_equals_the_dense_loss(name, chunk):
  want, got = _losses(dataclasses.replace(BASE, **CASES[name]), chunk)
  _assert_equal(got, want)


@pytest.mark.parametrize("deepstack", [2, 3])
def test_deepstack_inputs(deepstack):
  """Inputs added after layers 0..K-1: the last layer still runs at targets only while K < L,
  and with K = L all layers run before the head."""
  want, got = _losses(BASE, 4, deepstack=deepstack)
  _assert_equal(got, want)
