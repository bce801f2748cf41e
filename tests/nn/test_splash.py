"""The Pallas splash-attention backend (run by the Pallas interpreter on CPU) against the einsum
reference: packed and padded causal rows with grouped-query heads (values and gradients),
bidirectional sequences whose length is not a multiple of 128 under a mesh (shard_map), and a
sliding window inside a decoder."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hf_models import TOLERANCE, max_diff, record
from mmjax import sharding as shd
from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.llama import Decoder
from mmjax.nn.attention import dot_product_attention
from mmjax.nn.mask_spec import MaskSpec


def _qkv(b, t, n, k, h, seed=0):
  r = np.random.default_rng(seed)
  return [jnp.asarray(r.normal(size=(b, t, heads, h)), jnp.float32) for heads in (n, k, k)]


def _packed_rows(b, t):
  seg = np.ones((b, t), np.int32)
  seg[0, 70:] = 2  # two samples packed in row 0
  seg[1, 150:] = 0  # right padding in row 1
  return jnp.asarray(seg), jnp.asarray((seg > 0).astype(np.int32))


def test_causal_packed_gqa_values_and_gradients():
  q, k, v = _qkv(2, 160, 4, 2, 64)
  seg, valid = _packed_rows(2, 160)
  spec = MaskSpec(seg, valid, causal=True)
  weight = valid[:, :, None, None].astype(jnp.float32)  # padding rows are unspecified

  def loss(backend, q, k, v):
    out = dot_product_attention(q, k, v, spec, scale=64**-0.5, backend=backend)
    return jnp.sum(jnp.sin(out) * weight), out

  (_, want), want_grads = jax.value_and_grad(lambda *a: loss("xla", *a), (0, 1, 2),
                                             has_aux=True)(q, k, v)
  (_, got), got_grads = jax.value_and_grad(lambda *a: loss("splash_interpret", *a), (0, 1, 2),
                                           has_aux=True)(q, k, v)
  diff = max_diff(got * weight, want * weight)
  grad_diff = max(max_diff(g, w) for g, w in zip(got_grads, want_grads))
  record("nn/splash_causal_packed_gqa", diff)
  record("nn/splash_causal_packed_gqa_grads", grad_diff)
  assert diff <= TOLERANCE and grad_diff <= TOLERANCE


def test_bidirectional_odd_length_under_mesh():
  """A ViT-like sequence (37 tokens, padded to 128 inside) split over 8 devices by batch."""
  q, k, v = _qkv(8, 37, 2, 2, 32, seed=1)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), shd.MESH_AXES)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(shd.FSDP_RULES)):
    got = jax.jit(lambda q, k, v: dot_product_attention(
        q, k, v, None, scale=32**-0.5, backend="splash_interpret"))(q, k, v)
  want = dot_product_attention(q, k, v, None, scale=32**-0.5, backend="xla")
  diff = max_diff(got, want)
  record("nn/splash_bidirectional_odd_length_mesh", diff)
  assert diff <= TOLERANCE


def test_decoder_sliding_window_logits():
  cfg = DecoderConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16, sliding_window=40)
  seg, valid = _packed_rows(2, 160)
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 160)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(160), (2, 160))
  params = Decoder(cfg).init(jax.random.PRNGKey(0), ids, positions,
                             method=lambda m, i, p: m(m.embed(i), p))["params"]
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        nn.unbox(params))

  def run(backend):
    model = Decoder(dataclasses.replace(cfg, attention_backend=backend))
    x = model.apply({"params": params}, ids, method=lambda m, i: m.embed(i))
    return model.apply({"params": params}, x, positions, valid, seg)[0]

  diff = max_diff(run("splash_interpret"), run("xla"), np.asarray(valid, bool))
  record("nn/splash_decoder_sliding_window", diff)
  assert diff <= TOLERANCE
